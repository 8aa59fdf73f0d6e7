"""The settings a dataset builder reads (``--data-format``'s, the demo's): where the data is,
which images are labeled, which are unlabeled, and where the validation labels and boxes are."""
from __future__ import annotations

from dataclasses import dataclass

from semisup.config import SettingsView


@dataclass(frozen=True)
class DataSettings(SettingsView):
    """The settings of the same names (``semisup.config``; ``--help`` says each)."""
    data: str | None  # None: the embedded demo
    data_format: str
    val_dir: str
    val_labels: str | None
    val_boxes: str | None
    num_classes: int | None
    labeled_fraction: float  # >= 1: full supervision
    split_file: str | None
    splits_dir: str | None
    split_seed: int
    unlabeled: str  # 'rest' or 'all'
    forwards_pairs: bool  # steps forward the view / augmented-view pair: unlabeled images are used
    image_size: int  # the demo's images are made at this size
    demo_cache: str | None
    dry_run: bool

    @property
    def is_demo(self) -> bool:
        return self.data is None

    @property
    def full_supervision(self) -> bool:
        return self.labeled_fraction >= 1.0

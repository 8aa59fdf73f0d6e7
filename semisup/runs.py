"""What training, evaluation and reports share: a config's data, and a saved run's model.

Dependencies point one way: ``train`` uses ``evaluate``; both (and ``report``) use this
module; ``gallery`` uses ``boxes``; nothing here imports ``train`` or ``evaluate``.
"""
from __future__ import annotations

from pathlib import Path

from semisup import checkpoint as ckpt
from semisup.config import Config, config_from_dict
from semisup.data import DataBundle, build_demo_bundle
from semisup.errors import UserError
from semisup.models import build_model


def build_data(cfg: Config, decode_check: bool | None = None) -> DataBundle:
    """The labeled/unlabeled/validation bundle a config names: the embedded demo, FGVC-Aircraft
    in its released layout, or an ImageNet-style folder. ``decode_check`` (default: a dry run's)
    decodes the folder's labeled and validation images and a sample of the unlabeled ones."""
    if cfg.is_demo:
        return build_demo_bundle(cfg)
    if cfg.data_format == "fgvc-aircraft":
        from semisup.data import build_fgvc_aircraft_bundle
        return build_fgvc_aircraft_bundle(cfg)
    from semisup.imagenet import build_folder_bundle
    return build_folder_bundle(cfg, cfg.dry_run if decode_check is None else decode_check)


def load_run_model(checkpoint: str | Path, overrides: dict):
    """(model, cfg, step) from a checkpoint saved by this project; ``overrides`` replace config
    values (e.g. the data path on another machine)."""
    path = Path(checkpoint)
    if path.is_dir():
        hint = " (it holds no checkpoint.pt yet)" if not (path / "checkpoint.pt").exists() else f": pass {path / 'checkpoint.pt'}"
        raise UserError(f"--checkpoint {path} is a folder{hint}; pass a run's checkpoint.pt or model_best.pt")
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file; pass a run's checkpoint.pt or model_best.pt")
    try:
        state = ckpt.load(path)
    except Exception as err:  # torch raises several types for damaged files
        raise UserError(f"--checkpoint {path}: not a readable checkpoint ({type(err).__name__}); truncated, or not written by "
                        "semisup/run.py") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{checkpoint}: not a checkpoint written by semisup/run.py (no 'model' and 'config' entries)")
    values = dict(state["config"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = config_from_dict(values)
    num_classes = state["model"]["fc.weight"].shape[0]
    model = build_model(cfg.arch, num_classes)
    model.load_state_dict(state["model"])
    return model, cfg, state.get("step")

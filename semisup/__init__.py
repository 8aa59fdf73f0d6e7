"""Contrastive Grad-CAM Consistency (CGC): semi-supervised training, evaluation and cluster jobs.

Layers, lowest first (a module imports only from its own layer or below; ``tests/test_layout.py``):
foundation (``errors``, ``files``, ``config``, ``checkpoint``, ``distributed``, ``version``, ``runfiles``,
``scheduler``, ``cpus``, ``launchenv``, ``registry``: the names of explainers, metrics (with what
each declares), data formats and box formats, whose entries the layers above register) <
``models`` (backbones, pretrained loading, replica BatchNorm), ``data`` (datasets, transforms,
splits, boxes) < ``method`` (Grad-CAM and its explainers, heatmap transforms, losses) < ``eval`` <
``train`` < ``cluster``, ``tools`` < the commands (``run``, ``evaluate``, ``report``, ``jobs/``).
"""
import sys
from pathlib import Path


def _refuse_another_checkouts_script() -> None:
    """``python /other/clone/semisup/run.py`` imports the installed package, which may be another
    clone's: say so instead of running code other than the script's."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0].endswith(".py") else None
    here = Path(__file__).resolve().parent.parent
    for folder in script.parents if script else ():
        if (folder / "semisup" / "__init__.py").is_file() and script.parts[len(folder.parts)] in ("semisup", "jobs"):
            if folder != here:
                sys.exit(f"{sys.argv[0]} is in the checkout {folder}, but this Python imports semisup from {here}: "
                         f"run `pip install -e {folder}` to use that checkout")
            return


_refuse_another_checkouts_script()

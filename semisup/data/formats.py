"""Dataset formats, by ``--data-format``: each a builder ``(cfg, decode_check) -> DataBundle``
registered in ``semisup.registry.DATA_FORMATS`` (the only list of names). The embedded demo is
what a run without ``--data`` reads. A new format is one function in a file of its own::

    from semisup.data.formats import register_data_format
    @register_data_format("my-format")
    def build(cfg, decode_check): ...          # -> semisup.data.bundle.DataBundle

loaded with ``--plugins MODULE`` where it lies outside the package.
"""
from __future__ import annotations

from typing import Callable

from semisup.config import Config
from semisup.data.bundle import DataBundle
from semisup.data.datasets import build_demo_bundle, build_fgvc_aircraft_bundle
from semisup.data.imagenet import build_folder_bundle
from semisup.registry import DATA_FORMATS

Builder = Callable[[Config, bool], DataBundle]


def register_data_format(name: str) -> Callable[[Builder], Builder]:
    """``@register_data_format("name")`` on ``build(cfg, decode_check) -> DataBundle``."""
    def add(builder: Builder) -> Builder:
        return DATA_FORMATS.register(name, builder)
    return add


@register_data_format("imagefolder")
def _imagefolder(cfg: Config, decode_check: bool) -> DataBundle:
    """train/<class>/ and <val-dir>/ (ImageNet, CUB, Cars, Flowers), the standard or a custom split."""
    return build_folder_bundle(cfg, decode_check)


@register_data_format("fgvc-aircraft")
def _fgvc_aircraft(cfg: Config, decode_check: bool) -> DataBundle:
    """The FGVC-Aircraft 2013b archive as torchvision's reader takes it."""
    return build_fgvc_aircraft_bundle(cfg)


def build_data(cfg: Config, decode_check: bool | None = None) -> DataBundle:
    """The labeled/unlabeled/validation bundle a config names: the embedded demo without
    ``--data``, else its ``--data-format``'s builder. ``decode_check`` (default: a dry run's)
    decodes the labeled and validation images and a sample of the unlabeled ones."""
    if cfg.is_demo:
        return build_demo_bundle(cfg)
    return DATA_FORMATS.get(cfg.data_format)(cfg, cfg.dry_run if decode_check is None else decode_check)

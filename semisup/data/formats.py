"""Dataset formats, by ``--data-format``: each a builder ``(settings, decode_check) -> DataBundle``
registered in ``semisup.registry.DATA_FORMATS`` (the only list of names). The embedded demo is
what a run without ``--data`` reads. A new format is one function in a file of its own::

    from semisup.data.formats import register_data_format
    @register_data_format("my-format")
    def build(settings, decode_check): ...     # settings: DataSettings (settings.data, ...) -> DataBundle

loaded with ``--plugins MODULE`` where it lies outside the package.
"""
from __future__ import annotations

from typing import Callable

from semisup.data.bundle import DataBundle
from semisup.data.datasets import build_demo_bundle, build_fgvc_aircraft_bundle
from semisup.data.imagenet import build_folder_bundle
from semisup.data.settings import DataSettings
from semisup.registry import DATA_FORMATS

Builder = Callable[[DataSettings, bool], DataBundle]


def register_data_format(name: str) -> Callable[[Builder], Builder]:
    """``@register_data_format("name")`` on ``build(settings: DataSettings, decode_check) -> DataBundle``."""
    def add(builder: Builder) -> Builder:
        return DATA_FORMATS.register(name, builder)
    return add


@register_data_format("imagefolder")
def _imagefolder(settings: DataSettings, decode_check: bool) -> DataBundle:
    """train/<class>/ and <val-dir>/ (ImageNet, CUB, Cars, Flowers), the standard or a custom split."""
    return build_folder_bundle(settings, decode_check)


@register_data_format("fgvc-aircraft")
def _fgvc_aircraft(settings: DataSettings, decode_check: bool) -> DataBundle:
    """The FGVC-Aircraft 2013b archive as torchvision's reader takes it."""
    return build_fgvc_aircraft_bundle(settings)


def build_data(cfg, decode_check: bool | None = None) -> DataBundle:
    """The labeled/unlabeled/validation bundle a config (or its :class:`DataSettings`) names: the
    embedded demo without ``--data``, else its ``--data-format``'s builder, which receives the
    data settings only. ``decode_check`` (default: a dry run's) decodes the labeled and
    validation images and a sample of the unlabeled ones."""
    settings = cfg if isinstance(cfg, DataSettings) else DataSettings.of(cfg)
    if settings.is_demo:
        return build_demo_bundle(settings)
    return DATA_FORMATS.get(settings.data_format)(settings, settings.dry_run if decode_check is None else decode_check)

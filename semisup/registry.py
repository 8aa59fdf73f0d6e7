"""Registries of the parts a researcher adds: explainers, heatmap metrics and dataset formats.

Each registry is the only list of its names: ``--help``, the settings' validation and the docs
read it. The package's own entries live in the modules a registry names (imported the first
time it is read, so this module sits below them); a researcher's live in modules of their own,
named by ``--plugins MODULE`` (a setting, saved with the run), by ``SEMISUP_PLUGINS=mod1,mod2``
or by an installed package's ``semisup.plugins`` entry point. A plugin module registers with the
same decorators the package uses::

    from semisup.method.explainers import register_explainer
    @register_explainer("my-cam")
    def my_cam(request): ...                     # request.images, .logits, .features, .classes
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Generic, Iterable, TypeVar

from semisup.errors import UserError

PLUGINS_VARIABLE = "SEMISUP_PLUGINS"
ENTRY_POINT_GROUP = "semisup.plugins"
Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Names -> entries of one kind; ``flag`` is the setting that chooses among them."""

    def __init__(self, kind: str, flag: str, builtin_modules: tuple[str, ...]):
        self.kind, self.flag, self.builtin_modules = kind, flag, builtin_modules
        self._entries: dict[str, Entry] = {}
        self._families: dict[str, Callable[[str], Entry]] = {}  # "prefix/" -> factory(full name)
        self._loaded = False

    def register(self, name: str, entry: Entry) -> Entry:
        """Add ``entry`` as ``name``; a name taken by another entry is a programming error."""
        known = self._entries.get(name)
        if known is not None and known is not entry and getattr(known, "__qualname__", None) != getattr(
                entry, "__qualname__", object()):
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register_family(self, prefix: str, factory: Callable[[str], Entry]) -> Callable[[str], Entry]:
        """Names ``prefix<anything>`` (e.g. ``pgc/ScoreCAM``) built by ``factory(name)`` when first
        asked for: a family whose members another library lists, without importing it to list them."""
        self._families[prefix] = factory
        return factory

    def _family(self, name: str) -> Callable[[str], Entry] | None:
        prefix = next((p for p in self._families if name.startswith(p) and len(name) > len(p)), None)
        return self._families[prefix] if prefix else None

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)
            load_plugins(())

    def names(self) -> list[str]:
        """Every name, families as ``prefix<name>``."""
        self._load()
        return sorted(self._entries) + sorted(f"{p}<name>" for p in self._families)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or self._family(name) is not None

    def get(self, name: str) -> Entry:
        """The entry ``name``; an unknown name is one line naming the flag and the choices."""
        self._load()
        if name not in self._entries and self._family(name) is not None:
            self._entries[name] = self._family(name)(name)
        if name not in self._entries:
            raise UserError(f"{self.flag} {name}: no such {self.kind}; one of {', '.join(self.names())} "
                            f"(a plugin module adds more: --plugins MODULE)")
        return self._entries[name]

    def items(self) -> Iterable[tuple[str, Entry]]:
        self._load()
        return sorted(self._entries.items())


_imported_plugins: set[str] = set()


def plugin_modules(extra: Iterable[str] = ()) -> list[str]:
    """The plugin modules to import: ``extra`` (the ``--plugins`` setting), ``SEMISUP_PLUGINS``
    and installed packages' ``semisup.plugins`` entry points, in that order, once each."""
    named = [*extra, *(m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(",") if m.strip())]
    from importlib.metadata import entry_points
    named += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(named))


def load_plugins(modules: Iterable[str]) -> None:
    """Import the plugin modules (see :func:`plugin_modules`); one that cannot be imported is one
    line naming it and how it was named."""
    for module in plugin_modules(modules):
        if module in _imported_plugins:
            continue
        _imported_plugins.add(module)
        try:
            importlib.import_module(module)
        except ImportError as err:
            _imported_plugins.discard(module)
            raise UserError(f"--plugins {module}: cannot import it ({err}); its folder must be on PYTHONPATH "
                            f"(named by --plugins, {PLUGINS_VARIABLE} or a '{ENTRY_POINT_GROUP}' entry point)") from err
        # Any other exception is a bug in the plugin: its traceback is what its author needs.


EXPLAINERS: Registry = Registry("explainer", "--explainer",
                                ("semisup.method.explainers", "semisup.method.grad_cam_library"))
HEATMAP_METRICS: Registry = Registry("heatmap metric", "--metrics", ("semisup.eval.heatmap_metrics",))
DATA_FORMATS: Registry = Registry("data format", "--data-format", ("semisup.data.formats",))


def loaded_modules() -> list[str]:
    """The plugin modules imported in this process (recorded with a run)."""
    return sorted(m for m in _imported_plugins if m in sys.modules)

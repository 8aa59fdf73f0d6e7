"""Registries of the parts a researcher adds: backbones, explainers, metrics, dataset formats and box formats.

Each registry is the only list of its names: ``--help``, the settings' validation and the docs
read it. The package's own entries live in the modules a registry names (imported the first
time it is read, so this module sits below them); a researcher's live in modules of their own,
named by ``--plugins MODULE`` (a setting, saved with the run), by ``SEMISUP_PLUGINS=mod1,mod2``
or by an installed package's ``semisup.plugins`` entry point. A run folder is data: commands that
read one (resume, evaluate, report, status) never import the modules its config names. A plugin
module registers with the same decorators the package uses::

    from semisup.method.explainers import register_explainer
    @register_explainer("my-cam")
    def my_cam(request): ...                     # request.images, .logits, .features, .classes

A metric is a declaration (:class:`MetricSpec`: its key, pass, cadence, report column,
TensorBoard tag, ...) that the evaluator, the run log, the report, the status table and the
planner read; ``semisup/eval/heatmap_metrics.py``'s pointing game is the example to copy.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from semisup.errors import UserError

PLUGINS_VARIABLE = "SEMISUP_PLUGINS"
ENTRY_POINT_GROUP = "semisup.plugins"
Entry = TypeVar("Entry")


class RegistrationError(UserError, ValueError):
    """A name registered twice: in a plugin, one line naming it; in the package, a bug."""


class Registry(Generic[Entry]):
    """Names -> entries of one kind; ``flag`` is the setting that chooses among them."""

    def __init__(self, kind: str, flag: str, builtin_modules: tuple[str, ...]):
        self.kind, self.flag, self.builtin_modules = kind, flag, builtin_modules
        self._entries: dict[str, Entry] = {}
        self._families: dict[str, Callable[[str], Entry]] = {}  # "prefix/" -> factory(full name)
        self._loaded = False
        self._builtins_loaded = False
        _REGISTRIES.append(self)

    def register(self, name: str, entry: Entry) -> Entry:
        """Add ``entry`` as ``name``; a name taken by another entry is a programming error."""
        known = self._entries.get(name)
        if known is not None and known is not entry and getattr(known, "__qualname__", None) != getattr(
                entry, "__qualname__", object()):
            by = f"--plugins {_importing[-1]}: " if _importing else ""
            raise RegistrationError(f"{by}{self.kind} {name!r} is registered twice: the name is taken (by the package "
                                    "or an earlier plugin); give the new one a name of its own")
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

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load_builtins()
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

    def in_order(self) -> list[Entry]:
        """The entries in the order they were registered: the package's modules first (read
        before any plugin), then the plugins' in the order they were loaded."""
        self._load()
        return list(self._entries.values())


class Selection(Generic[Entry]):
    """The entries of a registry that ``keep`` accepts: a view read through it, never a second list."""

    def __init__(self, registry: Registry[Entry], kind: str, keep: Callable[[Entry], bool]):
        self.registry, self.kind, self.keep = registry, kind, keep

    def items(self) -> list[tuple[str, Entry]]:
        return [(name, entry) for name, entry in self.registry.items() if self.keep(entry)]

    def names(self) -> list[str]:
        return [name for name, _ in self.items()]

    def __contains__(self, name: str) -> bool:
        return name in self.registry and self.keep(self.registry.get(name))

    def get(self, name: str) -> Entry:
        if name not in self:
            raise UserError(f"{self.registry.flag} {name}: no such {self.kind}; one of {', '.join(self.names())}")
        return self.registry.get(name)


_imported_plugins: set[str] = set()
_importing: list[str] = []  # the plugin module being imported (named in a registration's error)
_REGISTRIES: list["Registry"] = []  # every registry made, whose built-in entries precede any plugin's


def plugin_modules(extra: Iterable[str] = ()) -> list[str]:
    """The plugin modules to import: ``extra`` (the ``--plugins`` setting), ``SEMISUP_PLUGINS``
    and installed packages' ``semisup.plugins`` entry points, in that order, once each."""
    named = [*extra, *split_modules(os.environ.get(PLUGINS_VARIABLE))]
    from importlib.metadata import entry_points
    named += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(named))


def split_modules(text: str | None) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``: the form of ``--plugins`` and ``SEMISUP_PLUGINS``."""
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def not_loaded(recorded: str | None) -> list[str]:
    """The plugin modules a run recorded (its ``plugins`` setting) that this process has not
    imported. A command reading a run never imports them itself: a run folder is data, and one
    received from someone else must not run their code (only ``--plugins``, ``SEMISUP_PLUGINS``
    and installed entry points load plugins)."""
    return [m for m in split_modules(recorded) if m not in _imported_plugins]


def not_loaded_note(recorded: str | None, where: str, flag: str = "--plugins") -> str | None:
    """One line for a run whose recorded plugins were not loaded, or None when none is missing."""
    missing = not_loaded(recorded)
    if not missing:
        return None
    names = ",".join(missing)
    return (f"{where} was made with plugin module(s) {names}, not loaded: a run folder never imports code; "
            f"pass {flag} {names} (or {PLUGINS_VARIABLE}) if you trust them")


def plugin_import_error(module: str, err: ImportError) -> UserError:
    """One line for a plugin module that does not import: a path given for a module name, a
    module not on PYTHONPATH, or an import inside the plugin that fails."""
    if "/" in module or module.endswith(".py"):
        name = Path(module).stem
        return UserError(f"--plugins {module}: a module name is wanted, not a file: --plugins {name} with its "
                         "folder on PYTHONPATH")
    if isinstance(err, ModuleNotFoundError) and err.name and (module + ".").startswith(err.name + "."):
        return UserError(f"--plugins {module}: cannot import it ({err}); its folder must be on PYTHONPATH (named by "
                         f"--plugins, {PLUGINS_VARIABLE} or a '{ENTRY_POINT_GROUP}' entry point)")
    return UserError(f"--plugins {module}: the plugin was found, but an import inside it fails ({err})")


def load_plugins(modules: Iterable[str]) -> None:
    """Import the plugin modules (see :func:`plugin_modules`); one that cannot be imported is one
    line naming it and how it was named. The package's own entries are registered first, so a
    registry's order (the report's columns, ``--metrics``' names) is theirs, then the plugins'."""
    pending = [m for m in plugin_modules(modules) if m not in _imported_plugins]
    if pending:
        for registry in _REGISTRIES:
            registry._load_builtins()
    for module in pending:
        if module in _imported_plugins:
            continue
        _imported_plugins.add(module)
        _importing.append(module)
        try:
            importlib.import_module(module)
        except ImportError as err:
            _imported_plugins.discard(module)
            raise plugin_import_error(module, err) from err
        except RegistrationError:
            _imported_plugins.discard(module)
            raise
        finally:
            _importing.pop()
        # Any other exception is a bug in the plugin: its traceback is what its author needs.


# --- Metrics -----------------------------------------------------------------------------------
# Every metric is one declaration (MetricSpec) in METRICS: the evaluator computes what its
# declarations ask for, and the run log, the report, the status table and the planner iterate
# over them. The package's are in semisup/eval/metrics.py (the passes' own numbers) and
# semisup/eval/heatmap_metrics.py (scored from the CH pass's heatmaps, like a plugin's).


@dataclass(frozen=True)
class EvalPass:
    """One pass of the evaluator over images; a metric is computed by exactly one."""
    name: str
    title: str  # in the planner's part names ("final CH, kNN, CGC loss")
    cost: str  # what one evaluation with it does more; semisup.train.plan prices it


# In the order the planner names them.
PASSES = {p.name: p for p in (
    EvalPass("top-1", "top-1", "a forward of each validation image (Resize + CenterCrop), decoded at the top-1 rate"),
    EvalPass("ch", "CH", "a forward and heatmap of each validation image at --ch-short-side, decoded at that size"),
    EvalPass("knn", "kNN", "a forward of each labeled image (the kNN bank), decoded at the top-1 rate"),
    EvalPass("cgc-loss", "CGC loss", "a forward of each validation image's augmented view, beside top-1's (no decode)"),
    EvalPass("consistency", "consistency",
             "4 augmented views of each validation image's top-1 crop and the heatmaps of all five (no decode)"),
    EvalPass("insertion", "insertion",
             "a saliency pass and 2 x 29 scored copies of each validation image, decoded at the top-1 rate"),
)}

# When a metric is computed. Each --eval-every epoch evaluates the EVERY_EVAL metrics; every
# --ch-every epoch, the last epoch, the best checkpoint and semisup/evaluate.py by default also
# the FULL_EVAL ones; EVALUATE_ONLY metrics only where semisup/evaluate.py --metrics names them.
EVERY_EVAL, FULL_EVAL, EVALUATE_ONLY = "every-eval", "full", "evaluate-only"
CADENCES = (EVERY_EVAL, FULL_EVAL, EVALUATE_ONLY)
# The report's tables a metric's column can be in (semisup/tools/report.py).
LIMITED, FULL_SUPERVISION, ABLATION = "limited", "full-supervision", "ablation"
REPORT_TABLES = (LIMITED, FULL_SUPERVISION, ABLATION)


@dataclass(frozen=True)
class MetricSpec:
    """What one metric declares; nothing else lists it.

    ``score`` is for metrics scored from the CH pass's heatmaps (a plugin's kind):
    ``score(cams [B, h, w], boxes: B arrays [n_i, 4], size (H, W)) -> [B]`` in [0, 1], reported as
    the percentage mean over images. The passes' own numbers (top-1, CH, ...) have none: the
    evaluator's pass computes them.
    """
    name: str  # its key in final.json, metrics.csv, eval.jsonl
    choice: str  # the semisup/evaluate.py --metrics name that asks for it ("ch" for every CH-pass number)
    evaluation_pass: str  # the pass that computes it (a key of PASSES): what it costs the planner
    cadence: str = FULL_EVAL  # one of CADENCES
    column: str | None = None  # the report's column; None: not in the report
    decimals: int = 2  # of the report's (and evaluate.py's) numbers
    tables: tuple[str, ...] = (LIMITED, FULL_SUPERVISION)  # the report's tables with its column
    best_in: tuple[str, ...] = ()  # tables that also show the best checkpoint's value, as "<column> best*"
    optional: bool = False  # its columns are left out where no run has it
    console: str | None = None  # its column in semisup/evaluate.py's printed table; None: not printed
    tag: str = ""  # TensorBoard's (default val/<name>)
    headline: bool = False  # a run's headline number: a final_* column of the status table and in TensorBoard's hparams
    hparam: bool | None = None  # in TensorBoard's hparams table (default: as headline)
    higher_is_better: bool = True
    summary: str = ""
    score: Callable | None = field(default=None, compare=False)

    def __post_init__(self):
        """Unknown passes, cadences or tables are a declaration's typo: said where it is made."""
        if self.evaluation_pass not in PASSES:
            raise ValueError(f"metric {self.name!r}: pass {self.evaluation_pass!r} is not one of {list(PASSES)}")
        if self.cadence not in CADENCES:
            raise ValueError(f"metric {self.name!r}: cadence {self.cadence!r} is not one of {CADENCES}")
        if self.score is not None and self.evaluation_pass != "ch":
            raise ValueError(f"metric {self.name!r}: a score() is computed on the CH pass's heatmaps, not in "
                             f"{self.evaluation_pass!r}")
        unknown = (set(self.tables) | set(self.best_in)) - set(REPORT_TABLES)
        if unknown:
            raise ValueError(f"metric {self.name!r}: no report table {sorted(unknown)}; one of {REPORT_TABLES}")
        object.__setattr__(self, "tag", self.tag or f"val/{self.name}")
        object.__setattr__(self, "hparam", self.headline if self.hparam is None else self.hparam)

    @property
    def width(self) -> int:
        """Characters of its column in evaluate.py's table."""
        return max(8, len(self.console or "") + 2)


class MetricRegistry(Registry[MetricSpec]):
    """METRICS, with the lists its consumers read, each in declaration order."""

    def choices(self, cadences: Iterable[str] = CADENCES) -> list[str]:
        """semisup/evaluate.py's --metrics names of the metrics of ``cadences``."""
        cadences = set(cadences)
        return list(dict.fromkeys(m.choice for m in self.in_order() if m.cadence in cadences))

    def passes(self, choices: Iterable[str]) -> list[EvalPass]:
        """The passes that compute what ``choices`` (--metrics names) ask for, in PASSES order;
        top-1 always (the evaluator always runs it: kNN features and the CGC loss ride on it)."""
        names = {"top-1"} | {m.evaluation_pass for m in self.in_order() if m.choice in set(choices)}
        return [p for p in PASSES.values() if p.name in names]

    def headline(self) -> list[str]:
        return [m.name for m in self.in_order() if m.headline]

    def hparams(self) -> list[str]:
        return [m.name for m in self.in_order() if m.hparam]

    def of_pass(self, evaluation_pass: str, choices: Iterable[str] | None = None) -> list[str]:
        """Names of the metrics ``evaluation_pass`` computes (those ``choices`` ask for, if given)."""
        return [m.name for m in self.in_order() if m.evaluation_pass == evaluation_pass
                and (choices is None or m.choice in set(choices))]

    def reported(self, table: str) -> list[MetricSpec]:
        """The metrics with a column in the report's ``table``."""
        return [m for m in self.in_order() if m.column and table in m.tables]

    def tag(self, key: str) -> str | None:
        """TensorBoard's tag of a result key; None for a key no metric declares."""
        return self.get(key).tag if key in self else None


# --arch -> factory(arch, num_classes) -> CamBackbone (semisup.models.base.register_backbone); a
# family "timm/" builds every "timm/<name>".
BACKBONES: Registry = Registry("architecture", "--arch", ("semisup.models.resnet", "semisup.models.timm_backbone"))
EXPLAINERS: Registry = Registry("explainer", "--explainer",
                                ("semisup.method.explainers", "semisup.method.grad_cam_library"))
METRICS: MetricRegistry = MetricRegistry("metric", "--metrics",
                                         ("semisup.eval.metrics", "semisup.eval.heatmap_metrics"))
# The metrics the evaluator scores from the CH pass's heatmaps (the pointing game, a plugin's).
HEATMAP_METRICS: Selection[MetricSpec] = Selection(METRICS, "heatmap metric", lambda m: m.score is not None)
DATA_FORMATS: Registry = Registry("data format", "--data-format", ("semisup.data.formats",))
# Readers of --val-boxes files (semisup.data.boxes.BoxReader), each recognising its own input.
BOX_FORMATS: Registry = Registry("box format", "--val-boxes", ("semisup.data.boxes",))


def loaded_modules() -> list[str]:
    """The plugin modules imported in this process (recorded with a run)."""
    return sorted(m for m in _imported_plugins if m in sys.modules)

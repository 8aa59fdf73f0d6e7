"""The settings reference, generated from the config's own metadata (``semisup.config``): every
setting's flags, YAML key, default (and the demo's), type, allowed values and help, by the groups
``run.py --help`` shows. The documentation site renders this at build time, so it cannot drift.

    python -m semisup.tools.settings_reference        # the same Markdown on stdout
"""
from __future__ import annotations

import dataclasses

from semisup import config as C


def _cell(text: object) -> str:
    """A Markdown table cell: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{text}`"


def allowed(f: dataclasses.Field) -> str:
    """What a setting accepts beyond its type: its choices or its range (``config._RANGES``)."""
    if f.metadata["choices"]:
        return ", ".join(_code(c) for c in f.metadata["choices"])
    rule = C._RANGES.get(f.name)
    return rule[1] if rule else ""


def default(f: dataclasses.Field) -> str:
    """The default, and the demo preset's value where it differs."""
    value = getattr(C.Config(), f.name)
    shown = "none" if value is None else _code(list(value) if isinstance(value, tuple) else value)
    if f.name in C.DEMO_PRESET:
        shown += f" (demo: {_code(C.demo_note(f.name))})"
    return shown


def flags(f: dataclasses.Field) -> str:
    """The command-line spellings (``--no-`` too for switches), or that it is a YAML key only."""
    if not f.metadata["cli"]:
        return "YAML only"
    spellings = list(C.flag_spellings(f.name))
    if C._field_type(f) is bool:
        spellings.append(f"--no-{f.name.replace('_', '-')}")
    return " ".join(_code(s) for s in spellings)


def render() -> str:
    """The reference as Markdown: one table per group of ``run.py --help``."""
    fields = {f.name: f for f in dataclasses.fields(C.Config)}
    lines = [
        "Every setting is a flag of `semisup/run.py` and a key of a `--config` YAML file (dashes or",
        "underscores), validated in one place (`semisup.config.validate`) for both. Defaults are the",
        "published 1 % ImageNet recipe; without `--data` the demo preset applies to the settings it names.",
        "`--recipe NAME` loads one of the published rows' settings: "
        + ", ".join(_code(r) for r in C.recipe_names()) + ".",
        "",
    ]
    grouped = [key for keys in C.HELP_GROUPS.values() for key in keys]
    groups = dict(C.HELP_GROUPS)
    rest = tuple(name for name in fields if name not in grouped)
    if rest:
        groups["other (YAML and saved configs)"] = rest
    for group, keys in groups.items():
        lines += [f"## {group[:1].upper()}{group[1:]}", "", "| flag | YAML key | default | accepts | what it does |",
                  "|---|---|---|---|---|"]
        for key in keys:
            f = fields[key]
            kind = getattr(C._field_type(f), "__name__", str(C._field_type(f)))
            accepts = "; ".join(x for x in (_code(kind), allowed(f)) if x)
            lines.append("| " + " | ".join(_cell(x) for x in (flags(f), _code(key), default(f), accepts,
                                                                f.metadata["help"])) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

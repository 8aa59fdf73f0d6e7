"""What the README and the documentation site name, checked against a checkout's files.

Read from the text as a reader reads it (inline code, code blocks, links):
- every ``--flag`` of this project's commands is defined in its code (a string literal of the
  flag, or a setting of ``semisup.config.Config``, with ``--no-`` for switches);
- every path under the project's own folders, and every link or image, exists (globs match);
- every ``module.name`` whose module is one of ``semisup``'s files is defined in that file, and
  every dotted ``semisup.x.y`` is a module or a name defined in one;
- every number of a block marked ``<!-- numbers from: FILE -->`` appears in FILE.

    python -m tests.doc_claims [ROOT]     # the problems, one a line; exit 1 if there are any

Static: nothing is imported from the checkout, so a copy with a file removed is checked as it is.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

DOCUMENTS = ("README.md", "FIDELITY.md", "RELIABILITY.md", "docs/*.md")
PROJECT_FOLDERS = ("semisup", "tests", "jobs", "splits", "pretrained", "results", "docs", ".ci")
# Folders and files a run or a command makes, named as examples in the docs (never in a checkout).
MADE_AT_RUN_TIME = ("runs/", "jobs/logs/", "results/demo/runs/", "results/imagenet", "pretrained/swav_", "pretrained/resnet",
                    "pretrained/torchvision_", "splits/1percent.txt", "splits/10percent.txt", "docs/_build")
# Commands of other programs: their flags are theirs (a line or span is read from our command on).
EXTERNAL = ("pip", "git", "sbatch", "srun", "salloc", "scancel", "scontrol", "squeue", "sacct", "sinfo", "torchrun",
            "tensorboard", "ruff", "apt-get", "#SBATCH", "/usr/bin/time", "time", "python -m pytest", "python -m sphinx",
            "pytest", "nvidia-smi", "du", "ls", "rsync", "mv", "cp", "rm", "tar", "wget", "curl", "export", "cd")
OURS = re.compile(r"(semisup/run\.py|semisup/evaluate\.py|semisup/report\.py|jobs/\w+\.py|"
                  r"semisup-(?:train|evaluate|report|bench|pretrained|splits|pretrain|submit|status)(?![\w-])|"
                  r"python -m semisup[\w.]*|python -m tests\.\w+)")
FLAG = re.compile(r"(?<![\w-])--(?:no-)?[a-z][a-z0-9-]*[a-z0-9]")
EXTENSIONS = ("py", "md", "yaml", "yml", "txt", "json", "jsonl", "csv", "pt", "pth", "tar", "png", "log", "sh", "toml",
              "gz", "err", "out", "pkl", "xml", "jpg", "JPEG", "html", "cfg")
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span and every line of a fenced block."""
    spans, in_block = [], False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = not in_block
        elif in_block:
            spans.append((lineno, line))
        else:
            spans += [(lineno, span) for span in re.findall(r"`([^`\n]+)`", line)]
    return spans


def _from_our_command(span: str) -> str:
    """The part of a command line whose flags are this project's: all of it, unless it starts
    with another program, then from our command on (``torchrun ... semisup/run.py --data``)."""
    stripped = span.strip().lstrip("$ ").strip()
    first = stripped.split(" ")[0]
    released_script = first.endswith(".py") and not OURS.fullmatch(first)  # train_eval_cgc.py --dataset cub
    if released_script or any(stripped == e or stripped.startswith(e + " ") for e in EXTERNAL):
        found = OURS.search(stripped)
        return stripped[found.start():] if found else ""
    return span


def known_flags(root: Path) -> set[str]:
    """Flags the code defines: the options of every ``add_argument`` call, and the settings of
    ``semisup.config.Config`` with their extra spellings (``flags=``)."""
    flags = set()
    for path in [*root.glob("semisup/**/*.py"), *root.glob("jobs/*.py"), *root.glob("tests/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # parser.add_argument(...), or an alias of it (``add = parser.add_argument``)
            called = getattr(node.func, "attr", None) or getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if called in ("add_argument", "add"):
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    tree = ast.parse((root / "semisup" / "config.py").read_text(encoding="utf-8"))
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    for item in config.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            flags.add("--" + item.target.id.replace("_", "-"))
            for keyword in getattr(item.value, "keywords", []):
                if keyword.arg == "flags" and isinstance(keyword.value, ast.Tuple):
                    flags |= {e.value for e in keyword.value.elts if isinstance(e, ast.Constant)}
    return flags | {"--no-" + f[2:] for f in flags} | {"--help"}  # argparse's own


def definitions(path: Path) -> set[str]:
    """Top-level names a module defines (functions, classes, assignments) and its classes' members."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, (ast.FunctionDef, ast.ClassDef))}
                names |= {f"{node.name}.{m.target.id}" for m in node.body
                          if isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def check_flags(span: str, known: set[str]) -> list[str]:
    return [f"flag {flag} is defined nowhere in the code" for flag in FLAG.findall(_from_our_command(span))
            if flag not in known]


def check_paths(span: str, root: Path) -> list[str]:
    problems = []
    for token in re.findall(r"[\w.][\w./*%-]*", span):
        token = token.rstrip(".,:;")
        first = token.split("/")[0]
        if "/" not in token or first not in PROJECT_FOLDERS or any((token + "/").startswith(m) for m in MADE_AT_RUN_TIME):
            continue
        if any(c in token for c in "%<>") or token.endswith("/*"):
            continue
        found = list(root.glob(token)) if "*" in token else [root / token] if (root / token).exists() else []
        if not found:
            problems.append(f"path {token} does not exist")
    return problems


def check_names(span: str, root: Path, modules: dict[str, list[Path]]) -> list[str]:
    """``module.name`` of semisup's modules, and dotted ``semisup.x.y``."""
    problems = []
    for dotted in re.findall(r"(?<![\w./-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)", span):
        parts = dotted.split(".")
        if parts[-1] in EXTENSIONS:
            continue
        if parts[0] == "semisup":
            if not _resolves(root, parts):
                problems.append(f"{dotted} is neither a module of semisup nor a name defined in one")
        elif parts[0] in modules and parts[0] != "semisup":
            name = ".".join(parts[1:3])
            if not any(name in definitions(p) or parts[1] in definitions(p) and len(parts) > 2 for p in modules[parts[0]]):
                problems.append(f"{dotted}: {parts[1]} is not defined in "
                                + " or ".join(str(p.relative_to(root)) for p in modules[parts[0]]))
    return problems


def _resolves(root: Path, parts: list[str]) -> bool:
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if module.is_file():
            rest = parts[cut:]
            return not rest or ".".join(rest[:2]) in definitions(module) or rest[0] in definitions(module)
    return False


def check_links(text: str, path: Path, root: Path) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        target = target.split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        if not (path.parent / target).exists():
            problems.append(f"link {target} does not exist")
    return problems


def check_quoted_numbers(text: str, root: Path) -> list[str]:
    """Each block (up to a blank line) after ``<!-- numbers from: FILE -->``: its numbers are in FILE."""
    problems = []
    for match in re.finditer(r"<!-- numbers from: (\S+) -->\n(.*?)(?:\n\s*\n|\Z)", text, re.S):
        source = root / match.group(1)
        if not source.is_file():
            problems.append(f"numbers quoted from {match.group(1)}, which does not exist")
            continue
        held = set(NUMBER.findall(source.read_text(encoding="utf-8")))
        problems += [f"{n} is not in {match.group(1)}" for n in NUMBER.findall(match.group(2)) if n not in held]
    return problems


def problems(root: Path) -> list[str]:
    """Every claim of the documents that the checkout at ``root`` does not hold, as
    ``file:line: what``."""
    root = Path(root)
    known = known_flags(root)
    modules: dict[str, list[Path]] = {}
    for path in root.glob("semisup/**/*.py"):
        modules.setdefault(path.stem, []).append(path)
    found = []
    for doc in documents(root):
        text = doc.read_text(encoding="utf-8")
        where = doc.relative_to(root)
        for lineno, span in code_spans(text):
            for problem in check_flags(span, known) + check_paths(span, root) + check_names(span, root, modules):
                found.append(f"{where}:{lineno}: {problem}")
        found += [f"{where}: {p}" for p in check_links(text, doc, root) + check_quoted_numbers(text, root)]
    return found


def main(argv: list[str]) -> int:
    found = problems(Path(argv[0]) if argv else Path(__file__).resolve().parents[1])
    print("\n".join(found) or "every claim holds")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

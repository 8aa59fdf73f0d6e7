"""The package's layers hold: every import, module-level or deferred, points down or sideways."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first (semisup/__init__.py draws the same picture).
LAYERS = [
    {"semisup", "errors", "files", "config", "checkpoint", "distributed", "version", "runfiles", "scheduler", "cpus", "launchenv", "registry"},
    {"models", "data"},
    {"method"},
    {"eval"},
    {"train"},
    {"cluster", "tools"},
    {"run", "evaluate", "report"},
]


def layer_of(module: str) -> int:
    """``semisup.data.splits`` -> the layer of ``data``; ``semisup`` -> 0."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "semisup"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> set[str]:
    """Every ``semisup`` module a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "semisup":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "semisup")
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted((ROOT / "semisup").rglob("*.py")):
        name = module_name(path)
        for target in imports(path):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_every_module_belongs_to_a_layer():
    tops = {p.relative_to(ROOT / "semisup").parts[0].removesuffix(".py") for p in (ROOT / "semisup").glob("*")
            if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert tops - {"__init__"} <= set().union(*LAYERS), tops - set().union(*LAYERS)


def test_no_code_edits_the_import_path():
    """The package is installed (``pip install -e .``): a script that puts a folder on sys.path
    would import another copy than the one installed, or shadow it for a snapshot's job."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    edits = ("sys.path.insert", "sys.path.append", "sys.path[0] =")
    offenders = [f for f in tracked if f != "tests/test_layout.py" and any(e in (ROOT / f).read_text() for e in edits)]
    assert not offenders, offenders


def test_a_script_of_another_checkout_is_refused_in_one_line(tmp_path):
    """``python /other/clone/semisup/run.py`` with this checkout installed would run this code."""
    (tmp_path / "semisup").mkdir()
    for name in ("__init__.py", "run.py"):
        (tmp_path / "semisup" / name).write_text((ROOT / "semisup" / name).read_text())
    out = subprocess.run([sys.executable, str(tmp_path / "semisup" / "run.py"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path.parent)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and f"pip install -e {tmp_path}" in out.stderr, out.stderr

"""The documentation: the site builds with warnings as errors, its settings reference is the
config's, and every flag, file, function and quoted number the README and the site name exists
(tests/doc_claims.py), shown to fail on a copy with one of each removed."""
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semisup.config import Config, flag_spellings
from tests.doc_claims import problems

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_with_warnings_as_errors_and_lists_every_setting(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs",
                          str(tmp_path / "html")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    settings = (tmp_path / "html" / "settings.html").read_text(encoding="utf-8")
    for f in dataclasses.fields(Config):
        assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{f.name}</span></code>" in settings, f.name
        if f.metadata["cli"]:
            assert flag_spellings(f.name)[-1] in settings, f.name
    for page in ("getting-started", "method", "imagenet", "cluster", "evaluation", "results", "performance",
                 "extending", "fidelity", "reliability"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    # The included tables are there, not just their headings.
    assert "input arithmetic" in (tmp_path / "html" / "fidelity.html").read_text(encoding="utf-8")


def test_every_claim_of_the_readme_and_the_site_holds():
    assert problems(ROOT) == []


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "checkout"
    copy.mkdir()
    keep = ("README.md", "FIDELITY.md", "RELIABILITY.md", "docs", "semisup", "jobs", "tests", "results", "splits",
            "pretrained", ".ci", "pyproject.toml", "requirements.txt")
    for name in keep:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "_build"))
        elif source.exists():
            shutil.copy2(source, copy / name)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_claims_check_fails_when_a_named_flag_file_function_or_number_is_removed(tmp_path):
    copy = _copy(tmp_path)
    assert problems(copy) == []
    _edit(copy / "semisup" / "cluster" / "launch.py", '"--sweep"', '"--grid"')
    (copy / "jobs" / "sweep_1percent.yaml").unlink()
    _edit(copy / "semisup" / "method" / "cgc.py", "def linear_head_cam(", "def closed_form_cam(")
    _edit(copy / "results" / "demo" / "results.md", "58.36 ± 0.74", "58.37 ± 0.74")
    found = "\n".join(problems(copy))
    assert "flag --sweep is defined nowhere in the code" in found
    assert "path jobs/sweep_1percent.yaml does not exist" in found
    assert "cgc.linear_head_cam: linear_head_cam is not defined in semisup/method/cgc.py" in found
    assert "README.md: 58.36 is not in results/demo/results.md" in found

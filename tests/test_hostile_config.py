"""A config file as hostile or careless input, generated from the settings themselves: every
setting given an empty value, every setting named twice (the same name, and an alias beside its
name), anchors and aliases, a file far too large or nested too deeply, a value of megabytes.
Each is refused in one line naming the file (and the line where the parser stopped), before
anything is created; none takes the last value, a default or minutes of parsing."""
import dataclasses
import os
import re
import time

import pytest

from semisup.config import CONFIG_FILE_LIMIT, Config, parse_config
from semisup.errors import UserError


def _refused(tmp_path, text: str, *argv: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        parse_config(["--config", str(path), "--run-dir", str(tmp_path / "run"), *argv])
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert time.perf_counter() - started < 5, "a refused config file took seconds"
    assert not (tmp_path / "run").exists()
    return message


def test_every_setting_with_an_empty_value_is_refused_naming_it(tmp_path):
    """``pretrained:`` (nothing after the colon) is neither the default nor 'none': refused, so
    the meaning is never guessed. An explicit ``null`` (as a saved config.yaml writes) is a value."""
    names = [f.name for f in dataclasses.fields(Config) if f.metadata["cli"]]
    for name in names:
        message = _refused(tmp_path, f"{name}:\n")
        assert f"'{name}' has no value" in message and "leave the key out" in message, message
    print(f"empty values: {len(names)} settings, each refused by name")


def test_every_setting_named_twice_is_refused_not_decided_by_line_order(tmp_path):
    cases = 0
    for f in dataclasses.fields(Config):
        if not f.metadata["cli"] or f.default is None or f.default is dataclasses.MISSING:
            continue
        value = f.default if not isinstance(f.default, tuple) else list(f.default)
        message = _refused(tmp_path, f"{f.name}: {value!r}\n{f.name}: {value!r}\n".replace("'", '"'))
        assert f"'{f.name}' is given twice (also on line 1)" in message and "line 2" in message, message
        cases += 1
        for alias in f.metadata["flags"]:  # `lambda` beside `cgc_weight`: one setting under two names
            bare = alias.lstrip("-")
            message = _refused(tmp_path, f"{bare}: {value!r}\n{f.name}: {value!r}\n".replace("'", '"'))
            assert f"'{bare}' and '{f.name}' both set {f.name}" in message, message
            cases += 1
    assert cases > 30
    print(f"settings named twice: {cases} cases refused")


@pytest.mark.parametrize("text, says", [
    ("a: &x [40, 52]\nlr_milestones: *x\n", "anchors (&name) and aliases (*name) are not accepted"),
    # The 'billion laughs': a few hundred bytes that expand to gigabytes through aliases.
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
     + "epochs: *i\n", "aliases"),
    ("epochs: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("epochs: 2\n# " + "x" * CONFIG_FILE_LIMIT + "\n", "larger than 1024 KiB"),
])
def test_yaml_that_expands_or_sprawls_is_refused_before_it_is_expanded(tmp_path, text, says):
    assert says in _refused(tmp_path, text)


def test_a_value_of_megabytes_is_quoted_cut(tmp_path):
    message = _refused(tmp_path, "explainer: " + "x" * 500_000 + "\n")
    assert "(500002 characters)" in message and len(message) < 400


def test_a_config_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="a FIFO, not a regular file"):
        parse_config(["--config", str(fifo)])


def test_a_tilde_in_every_path_setting_is_the_home_folder(tmp_path, monkeypatch):
    """`--run-dir=~/r` (no shell expands it after '=') and `run_dir: ~/r` in YAML both name the
    home folder; before, a folder named '~' was made while one writer expanded it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config(["--run-dir=~/r", "--demo-cache=~/cache"])
    assert cfg.run_dir == str(tmp_path / "r") and cfg.demo_cache == str(tmp_path / "cache")
    (tmp_path / "c.yaml").write_text("run_dir: ~/from-yaml\n")
    assert parse_config(["--config", str(tmp_path / "c.yaml")]).run_dir == str(tmp_path / "from-yaml")


@pytest.mark.parametrize("text", ["[a, b]: 1\n", "? [1]\n: 2\nepochs: 2\n"])
def test_a_list_as_a_key_is_refused_in_one_line(tmp_path, text):
    assert "line" in _refused(tmp_path, text)


def test_a_sweep_file_that_sprawls_is_refused_in_one_line(tmp_path):
    from semisup.cluster.launch import sweep_commands
    sweep = tmp_path / "sweep.yaml"
    for text, says in (("grid: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
                       ("a: &x [1]\ngrid: {seed: *x}\n", "anchors (&name) and aliases")):
        sweep.write_text(text)
        with pytest.raises(UserError, match=re.escape(says)):
            sweep_commands(sweep, tmp_path / "runs")

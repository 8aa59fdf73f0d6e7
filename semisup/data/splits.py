"""Labeled-subset files: the standard SimCLR ImageNet subsets and seeded stratified ones.

    semisup-splits download        # fetch 1percent.txt and 10percent.txt into splits/, verify sha256
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np

from semisup.config import PROJECT_ROOT
from semisup.data.settings import DataSettings
from semisup.errors import Parser, UserError, cli
from semisup.files import read_bounded, write_atomic

SPLITS_DIR = PROJECT_ROOT / "splits"
_SOURCE = "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/"
STANDARD = {
    0.01: ("1percent.txt", "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    0.1: ("10percent.txt", "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}
DOWNLOAD_COMMAND = "semisup-splits download"


class SplitError(UserError, ValueError):
    pass


def synset_of(entry: str) -> str:
    """The class of a split entry: ``n01440764_10026.JPEG`` -> ``n01440764`` (SimCLR's names, the
    class before the first underscore); ``cardinal/photo 12.jpg`` -> ``cardinal`` (a dataset whose
    file names do not begin with their class: the entry is ``<class folder>/<file name>``)."""
    return entry.split("/", 1)[0] if "/" in entry else entry.split("_", 1)[0]


def split_entries(classes: list[str], names: list[str], labels: list[int]) -> list[str]:
    """Each training file (``names``: file names) as a split file names it: its file name where
    every file name begins with its class and an underscore (ImageNet, SimCLR's subsets), else
    ``<class>/<file name>`` (any image folder: the class is the folder, and equal names in two
    folders stay apart)."""
    if all(n.startswith(classes[label] + "_") for n, label in zip(names, labels)):
        return names
    return [f"{classes[label]}/{n}" for n, label in zip(names, labels)]


def _is_entry(line: str) -> bool:
    """A split line: SimCLR's ``n01440764_10026.JPEG`` (no space, the class before an underscore),
    or ``<class folder>/<file name>``."""
    if "/" in line:
        folder, _, name = line.partition("/")
        return bool(folder) and bool(name) and "/" not in name
    return "_" in line and " " not in line


def read_split(path: str | Path) -> list[str]:
    """File names listed in a split file, one per line; malformed lines are errors naming the line."""
    path = Path(path)
    try:
        data = read_bounded(path, error=SplitError)
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            if b"\0" in data:  # binary: no file name holds a NUL
                raise
            # File names that are not UTF-8 (an old archive's), as the file system gives them back.
            lines = data.decode("utf-8", "surrogateescape").splitlines()
    except UnicodeDecodeError as err:
        raise SplitError(
            f"{path}: not a text file ({err.reason} at byte {err.start}); a split file has one training file name a"
            " line"
        ) from err
    except OSError as err:
        raise SplitError(
            f"{path}: cannot be read ({err.strerror or err}); a split file has one training file name a line"
        ) from err
    names, seen = [], {}
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if not _is_entry(name):
            raise SplitError(f"{path}:{n}: expected a training file name like n01440764_10026.JPEG (or "
                             f"<class folder>/<file name> where names do not begin with their class), got {name!r}")
        if name in seen:  # it would train on that image twice as often as on the others
            raise SplitError(f"{path}:{n}: {name} is listed again (first on line {seen[name]}); each labeled file once")
        seen[name] = n
        names.append(name)
    if not names:
        raise SplitError(f"{path}: empty split file")
    return names


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def standard_split_path(fraction: float, splits_dir: Path = SPLITS_DIR) -> Path | None:
    """The standard file for 0.01 / 0.1, verified; None for other fractions."""
    for value, (name, digest) in STANDARD.items():
        if abs(fraction - value) < 1e-9:
            path = splits_dir / name
            if not path.is_file():
                raise SplitError(
                    f"{path} is missing: the standard {fraction:g} split is downloaded with `{DOWNLOAD_COMMAND}`"
                )
            if sha256(path) != digest:
                raise SplitError(
                    f"{path}: sha256 differs from the standard SimCLR file; delete it and run `{DOWNLOAD_COMMAND}`"
                )
            return path
    return None


def stratified_choice(groups: list, fraction: float, rng: np.random.Generator) -> list:
    """round(fraction * n) (at least 1, at most n) members of each group (a sequence), drawn
    without replacement with ``rng``, group after group; the chosen members in that order."""
    chosen = []
    for members in groups:
        k = min(len(members), max(1, int(round(fraction * len(members)))))
        chosen.extend(members[i] for i in rng.choice(len(members), size=k, replace=False))
    return chosen


def stratified_split(names_by_class: dict[str, list[str]], fraction: float, seed: int) -> list[str]:
    """round(fraction * n_c) (at least 1) file names per class, drawn with ``seed``; sorted."""
    groups = [sorted(names_by_class[wnid]) for wnid in sorted(names_by_class)]
    return sorted(stratified_choice(groups, fraction, np.random.default_rng(seed)))


def dataset_digest(names: list[str]) -> str:
    """8 hex digits naming the set of training files, so a split built for one dataset is never
    reused for another with the same fraction and seed."""
    # surrogateescape: a name that is not UTF-8 is hashed as its bytes (UTF-8 names as before).
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def custom_split_path(fraction: float, seed: int, names: list[str], splits_dir: Path = SPLITS_DIR) -> Path:
    return splits_dir / f"{fraction:g}-seed{seed}-{dataset_digest(names)}.txt"


def write_split(names: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(names) + "\n").encode("utf-8", "surrogateescape")  # names as the file system gave them
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def imagenet_layout(names: list[str]) -> bool:
    """Whether split entries are ImageNet's (``n01440764_10026.JPEG``: a WordNet id, an underscore,
    the file name), for which the standard 1 % and 10 % files are meant. Any other dataset gets a
    stratified split at those fractions too: the standard files' names can never match it."""
    if not names or "/" in names[0]:  # split_entries names every file by its folder, or none
        return False
    return all(re.fullmatch(r"n\d{8}", wnid) for wnid in {name.split("_", 1)[0] for name in names})


def resolve_labeled(names: list[str], settings: DataSettings, splits_dir: Path = SPLITS_DIR) -> tuple[list[str], Path]:
    """The labeled file names for ``settings`` and the split file they come from.

    ``names``: every training file as :func:`split_entries` names it. Standard fractions read the SimCLR
    files; any other fraction builds a stratified subset once and writes it to ``splits/``, named by
    fraction, seed and a digest of the dataset's file names.
    """
    if settings.split_file:
        path = Path(settings.split_file)
        if not path.is_file():
            raise SplitError(f"--split-file {path}: no such file")
        return read_split(path), path
    standard = any(abs(settings.labeled_fraction - value) < 1e-9 for value in STANDARD)
    path = standard_split_path(settings.labeled_fraction, splits_dir) if standard and imagenet_layout(names) else None
    if path is not None:
        return read_split(path), path
    path = custom_split_path(settings.labeled_fraction, settings.split_seed, names, splits_dir)
    if not path.is_file():
        by_class = defaultdict(list)
        for name in names:
            by_class[synset_of(name)].append(name)
        write_split(stratified_split(by_class, settings.labeled_fraction, settings.split_seed), path)
    return read_split(path), path


def download(dest: Path = SPLITS_DIR) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in STANDARD.values():
        path = dest / name
        if path.is_file() and sha256(path) == digest:
            print(f"{path}: present, sha256 ok")
            continue
        tmp = path.with_suffix(".part")
        print(f"downloading {_SOURCE + name} -> {path}")
        try:
            urllib.request.urlretrieve(_SOURCE + name, tmp)
        except OSError as err:  # no network, DNS, HTTP errors
            raise UserError(f"could not download {_SOURCE + name} ({err}); copy {name} into {dest} from a machine with "
                            "network access (its sha256 is checked)") from err
        if sha256(tmp) != digest:
            tmp.unlink()
            raise UserError(f"{name}: sha256 mismatch after download (expected {digest}); nothing was written")
        tmp.replace(path)
        print(f"{path}: sha256 ok")


@cli
def main(argv=None) -> int:
    parser = Parser(prog="semisup-splits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["download"])
    parser.add_argument("--dest", type=Path, default=SPLITS_DIR)
    args = parser.parse_args(argv)
    download(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The file index of a class-folder tree, built once and cached; paths held in numpy arrays.

Listing ImageNet's 1,281,167 training files takes tens of seconds on a warm file system and
minutes on a cold network one, at every start, dry run and evaluation. The index (class folders
and their image file names) is cached in the user's cache (``$SEMISUP_INDEX_CACHE``, else
``$XDG_CACHE_HOME/semisup/index`` or ``~/.cache/semisup/index``), one file per dataset folder,
keyed by every class folder's name, size and modification time: adding, removing or renaming
a file changes its folder's modification time, and the index is rebuilt, with one line saying
which folders changed. The cache file holds arrays only (``np.load(allow_pickle=False)``): a
cache file, like any file a run reads, never executes.

:class:`PathTable` holds the paths as numpy arrays (a folder table and one byte blob of names)
instead of a Python list of 1.28 M ``str``: a loader worker that reads a list's items touches
their reference counts and copies, page by page, the parent's memory it shares (pytorch/pytorch#13246);
numpy arrays are read without writing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_VARIABLE = "SEMISUP_INDEX_CACHE"
FORMAT = 3  # of the cache file (and of what it lists as images): another is rebuilt
BOXES_FORMAT = 2  # of the parsed annotations' cache (class names NUL-separated: a name may hold a line break)
# What np.load raises for a damaged cache file (empty, cut, not a zip, a pickle refused).
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError)


class PathTable(Sequence):
    """A read-only sequence of paths ``folder/name`` stored as arrays: ``table[i]`` is a ``str``.
    Names are kept as the file system's bytes (``os.fsencode``: NUL-separated, a byte no file name
    holds), so a name that is not UTF-8 (from an old archive) round-trips as Python's other path
    functions give it."""

    def __init__(self, paths=()):
        folders, index, names = {}, [], []
        for path in paths:
            folder, slash, name = str(path).rpartition("/")
            index.append(folders.setdefault(folder + slash, len(folders)))  # "/a.jpg": folder "/"; "a.jpg": ""
            names.append(name)
        self._set(list(folders), np.asarray(index, dtype=np.int32), names)

    @classmethod
    def of_folders(cls, root: str, folders: list[str], names_by_folder: list[list[str]]) -> "PathTable":
        """``root/folder/name`` for each folder's names, in order, without making the 1.28 M strings."""
        table = cls()
        counts = np.array([len(n) for n in names_by_folder], dtype=np.int64)
        folder_of = np.repeat(np.arange(len(folders), dtype=np.int32), counts)
        names = [n for folder_names in names_by_folder for n in folder_names]
        table._set([os.path.join(root, f, "") for f in folders], folder_of, names)
        return table

    def _set(self, folders: list[str], folder_of: np.ndarray, names: list[str]) -> None:
        self._folders = [os.fsencode(f) for f in folders]  # each ending in "/" (or ""); a few thousand: a list is fine
        self._folder_of = folder_of
        blob = "\0".join(names).encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
        self._blob = np.frombuffer(blob, dtype=np.uint8)
        self._starts = np.concatenate([[0], np.flatnonzero(self._blob == 0) + 1]).astype(np.int64) if names else \
            np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._folder_of)

    def name_bytes(self, index: int) -> bytes:
        start = int(self._starts[index])
        end = int(self._starts[index + 1]) - 1 if index + 1 < len(self._starts) else len(self._blob)
        return self._blob[start:end].tobytes()

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = int(index) % len(self)
        folder = self._folders[self._folder_of[index]]
        return os.fsdecode(folder + self.name_bytes(index))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def names(self) -> list[str]:
        """Every file name (without its folder), in order, in one decode."""
        if not len(self):
            return []
        return self._blob.tobytes().decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()).split("\0")


def cache_folder() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "semisup" / "index"


def _folder_keys(root: Path, classes: list[str]) -> list[list]:
    """[name, size, mtime_ns] of the root and of each class folder: what changes when a file is
    added, removed or renamed in it."""
    keys = []
    for name in ["", *classes]:
        st = os.stat(os.path.join(root, name) if name else root)
        keys.append([name, st.st_size, st.st_mtime_ns, st.st_ino])
    return keys


def _scan(root: Path, classes: list[str], is_image) -> tuple[list[list[str]], int]:
    names_by_class, skipped = [], 0
    for wnid in classes:
        with os.scandir(os.path.join(root, wnid)) as entries:
            names = sorted(e.name for e in entries if e.is_file())
        images = [n for n in names if is_image(n)]
        skipped += len(names) - len(images)
        names_by_class.append(images)
    return names_by_class, skipped


def class_folder_index(root: Path, is_image) -> tuple[list[str], list[list[str]], int]:
    """(classes, image file names of each class in sorted order, non-image files skipped) of
    ``root/<class>/<file>``, from the cache where the folders are unchanged."""
    root = Path(root)
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir())
    keys = _folder_keys(root, classes)
    path = cache_folder() / (hashlib.sha256(os.fsencode(str(root.resolve()))).hexdigest()[:20] + ".npz")
    cached = _read_cache(path, root)
    if isinstance(cached, tuple) and cached[0] == keys:
        log.info("file index of %s: read from the cache (%s; its %d class folders unchanged)", root, path, len(classes))
        return classes, cached[1], cached[2]
    started = time.perf_counter()
    names_by_class, skipped = _scan(root, classes, is_image)
    files = sum(map(len, names_by_class))
    reason = ("built" if cached is None else f"rebuilt ({cached})" if isinstance(cached, str)
              else f"rebuilt ({_changed(cached[0], keys)} changed since it was cached)")
    where = _write_cache(path, root, keys, classes, names_by_class, skipped)
    log.info("file index of %s: %s, %d files in %.1f s; %s", root, reason, files, time.perf_counter() - started, where)
    return classes, names_by_class, skipped


def _changed(old: list[list], new: list[list]) -> str:
    before = {k[0]: k[1:] for k in old}
    after = {k[0]: k[1:] for k in new}
    changed = sorted(n or "the root" for n in set(before) | set(after) if before.get(n) != after.get(n))
    return f"{len(changed)} folder(s): {', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}"


def _read_cache(path: Path, root: Path):
    """(keys, names by class, skipped) from a cache file, or None where there is none; a string
    saying why where it is damaged, of another format or of another folder (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            if meta.get("format") != FORMAT or meta.get("root") != str(root.resolve()):
                return "the cache file is of another format or folder"
            counts = data["counts"]
            blob = data["names"].tobytes().decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
            names = blob.split("\0") if int(counts.sum()) else []
    except UNREADABLE as err:
        return f"the cache file was unreadable: {type(err).__name__}"
    if len(names) != int(counts.sum()) or len(counts) != len(meta["keys"]) - 1:
        return "the cache file did not add up"
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return meta["keys"], [names[bounds[c]:bounds[c + 1]] for c in range(len(counts))], int(meta["skipped"])


def _write_cache(path: Path, root: Path, keys, classes, names_by_class, skipped) -> str:
    """Write the cache atomically; where it cannot be written (a read-only home), say so and go on."""
    from semisup.files import write_atomic
    meta = dict(format=FORMAT, root=str(root.resolve()), keys=keys, skipped=skipped)
    blob = "\0".join(n for names in names_by_class for n in names).encode(
        sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    arrays = dict(meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                  counts=np.array([len(n) for n in names_by_class], dtype=np.int64),
                  names=np.frombuffer(blob, dtype=np.uint8))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save(tmp, arrays))
    except OSError as err:
        return f"not cached ({err.strerror or err}: {path}; set {CACHE_VARIABLE} to a writable folder)"
    return f"cached in {path}"


def _save(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary's name
        np.savez(f, **arrays)


def checked_sizes(folder: Path, paths: list[str], check) -> list[tuple[int, int] | None]:
    """``check(paths)`` (each file's (H, W) after a full decode, None where unreadable), done only
    for files that are new or changed since the last check of ``folder``'s files: a file whose
    size, modification time and inode are those it had when it was checked decodes as it did.
    The results are cached beside the file index (the dry run decodes the 62,811 labeled and
    validation images of 1 % ImageNet: 30 s on two cores, each time)."""
    path = cache_folder() / (hashlib.sha256(os.fsencode(str(Path(folder).resolve()))).hexdigest()[:20] + "-decoded.npz")
    known = _read_checks(path)
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stats.append(None)
    results: list = [None] * len(paths)
    todo = []
    for i, (p, st) in enumerate(zip(paths, stats)):
        entry = known.get(p)
        if st is not None and entry is not None and entry[:3] == st:
            results[i] = entry[3] if entry[3][0] >= 0 else None
        else:
            todo.append(i)
    if todo:
        for i, size in zip(todo, check([paths[i] for i in todo])):
            results[i] = size
            if stats[i] is not None:
                known[paths[i]] = (*stats[i], size if size is not None else (-1, -1))
        _write_checks(path, known)
    log.info("decode check: %d file(s) decoded, %d unchanged since their last check", len(todo), len(paths) - len(todo))
    return results


def _read_checks(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data["names"].tobytes().split(b"\n")
            numbers = data["numbers"]
    except UNREADABLE:
        return {}
    if len(names) != len(numbers):
        return {}
    return {os.fsdecode(n): (int(a), int(b), int(c), (int(h), int(w))) for n, (a, b, c, h, w) in zip(names, numbers)}


def _write_checks(path: Path, known: dict) -> None:
    from semisup.files import write_atomic
    names = b"\n".join(os.fsencode(p) for p in known)
    numbers = np.array([(a, b, c, h, w) for a, b, c, (h, w) in known.values()], dtype=np.int64).reshape(-1, 5)
    arrays = dict(names=np.frombuffer(names, dtype=np.uint8), numbers=numbers)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save(tmp, arrays))
    except OSError as err:
        log.info("decode check results not cached (%s: %s)", err.strerror or err, path)


def xml_files(folder: Path) -> list[str]:
    """Every ``*.xml`` below ``folder``, sorted (os.scandir: pathlib's rglob spent seconds on 50,000)."""
    found, pending = [], [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):  # as rglob: a link back up would walk for ever
                    pending.append(entry.path)
                elif entry.name.endswith(".xml") and entry.is_file():
                    found.append(entry.path)
    return sorted(found)


def cached_voc_boxes(folder: Path, files: list[str], parse) -> list:
    """``[parse(file) for file in files]`` (each an ``ImageBoxes``), reusing the parse of every file
    whose size, modification time and inode are unchanged since it was cached: ImageNet's 50,000
    annotations took 5 s to parse at every start. The cache holds numbers and names only."""
    from semisup.data.boxes import ImageBoxes
    path = cache_folder() / (hashlib.sha256(os.fsencode(str(Path(folder).resolve()))).hexdigest()[:20] + "-boxes.npz")
    stats = np.array([(st.st_size, st.st_mtime_ns, st.st_ino) for st in map(os.stat, files)], dtype=np.int64)
    cached = _read_boxes(path, files, stats)
    if cached is not None:
        return [ImageBoxes(size, by_class) for size, by_class in cached]
    parsed = [parse(f) for f in files]
    _write_boxes(path, files, stats, parsed)
    return parsed


def _read_boxes(path: Path, files: list[str], stats: np.ndarray):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data["files"].tobytes().split(b"\n") if len(data["files"]) else []
            same = len(names) == len(files) and np.array_equal(data["stats"], stats) and \
                names == [os.fsencode(f) for f in files]
            if not same:
                return None
            sizes, rows, owner = data["sizes"], data["rows"], data["owner"]
            if int(data["format"]) != BOXES_FORMAT:
                return None
            classes = data["classes"].tobytes().decode().split("\0")
            klass = data["klass"]
    except UNREADABLE:
        return None
    out = [(None if h < 0 else (int(h), int(w)), {}) for h, w in sizes]
    for start, end, image, c in zip(*_runs(owner, klass)):
        out[image][1][classes[c]] = rows[start:end]
    return out


def _runs(owner: np.ndarray, klass: np.ndarray):
    """(starts, ends, image, class) of the runs of equal (owner, class) rows."""
    if not len(owner):
        return [], [], [], []
    change = np.flatnonzero((np.diff(owner) != 0) | (np.diff(klass) != 0)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(owner)]])
    return starts, ends, owner[starts], klass[starts]


def _write_boxes(path: Path, files: list[str], stats: np.ndarray, parsed: list) -> None:
    from semisup.files import write_atomic
    classes: dict[str, int] = {}
    rows, owner, klass = [], [], []
    for i, boxes in enumerate(parsed):
        for name, array in boxes.by_class.items():
            rows.append(np.asarray(array, dtype=np.float32).reshape(-1, 4))
            owner += [i] * len(rows[-1])
            klass += [classes.setdefault(name, len(classes))] * len(rows[-1])
    arrays = dict(
        files=np.frombuffer(b"\n".join(os.fsencode(f) for f in files), dtype=np.uint8), stats=stats,
        sizes=np.array([b.size if b.size is not None else (-1, -1) for b in parsed], dtype=np.int64).reshape(-1, 2),
        rows=np.concatenate(rows) if rows else np.zeros((0, 4), np.float32),
        owner=np.array(owner, dtype=np.int64), klass=np.array(klass, dtype=np.int64),
        classes=np.frombuffer("\0".join(classes).encode(), dtype=np.uint8), format=np.array(BOXES_FORMAT))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save(tmp, arrays))
    except OSError as err:
        log.info("parsed annotations not cached (%s: %s)", err.strerror or err, path)

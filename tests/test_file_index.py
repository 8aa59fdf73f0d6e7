"""The cached file index, decode checks and parsed annotations of an image-folder tree: read from
the cache while the folders are unchanged, rebuilt (saying which folders changed) when they are
not, never trusted when damaged; paths held in numpy arrays, names that are not UTF-8 included."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from semisup.data import fileindex
from semisup.data.fileindex import PathTable, class_folder_index
from semisup.data.imagenet import is_image_file, scan_class_folders
from tests.imagenet_tree import make_tree


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(fileindex.CACHE_VARIABLE, str(folder))
    return folder


def _index(root, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="semisup.data.fileindex"):
        result = class_folder_index(root, is_image_file)
    lines = [r.getMessage() for r in caplog.records if "file index" in r.getMessage()]
    assert len(lines) == 1, lines
    return result, lines[0]


def test_the_index_is_cached_and_rebuilt_when_a_folder_changes(tmp_path, cache, caplog):
    make_tree(tmp_path / "data", bad=False)
    root = tmp_path / "data" / "train"
    built, said = _index(root, caplog)
    assert ": built," in said and "cached in" in said and len(list(cache.iterdir())) == 1
    again, said = _index(root, caplog)
    assert "read from the cache" in said and again == built
    # A file added to one class folder: that folder changed, the index is rebuilt and holds it.
    Image.new("RGB", (8, 8)).save(root / "n00000002" / "n00000002_new.JPEG")
    rebuilt, said = _index(root, caplog)
    assert "rebuilt (1 folder(s): n00000002 changed" in said, said
    assert "n00000002_new.JPEG" in rebuilt[1][1] and rebuilt[1][0] == built[1][0]
    os.remove(root / "n00000001" / "n00000001_0.JPEG")  # removed: rebuilt without it
    rebuilt, said = _index(root, caplog)
    assert "rebuilt" in said and "n00000001_0.JPEG" not in rebuilt[1][0]
    assert rebuilt == _fresh_scan(root)


def _fresh_scan(root):
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    names = [sorted(n for n in os.listdir(root / c) if is_image_file(n)) for c in classes]
    return classes, names, 0


@pytest.mark.parametrize("damage", [b"", b"not an npz", None])
def test_a_damaged_cache_file_is_rebuilt_never_believed(tmp_path, cache, caplog, damage):
    make_tree(tmp_path / "data", bad=False)
    root = tmp_path / "data" / "train"
    built, _ = _index(root, caplog)
    cached = next(cache.iterdir())
    if damage is None:  # a valid file that claims other names for the same folders
        with np.load(cached) as data:
            arrays = dict(data)
        arrays["names"] = np.frombuffer(b"\0".join([b"evil.JPEG"] * int(arrays["counts"].sum())), dtype=np.uint8)
        arrays["counts"] = arrays["counts"]  # unchanged: only the names were replaced...
        meta = arrays["meta"].tobytes().replace(b'"format": %d' % fileindex.FORMAT, b'"format": 99')  # ...another format
        arrays["meta"] = np.frombuffer(meta, dtype=np.uint8)
        with open(cached, "wb") as f:
            np.savez(f, **arrays)
    else:
        cached.write_bytes(damage)
    again, said = _index(root, caplog)
    assert "rebuilt (the cache file" in said and again == built


def test_an_unwritable_cache_is_said_and_the_index_still_read(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(fileindex.CACHE_VARIABLE, str(blocker / "cache"))  # a file where the folder would be
    make_tree(tmp_path / "data", bad=False)
    result, said = _index(tmp_path / "data" / "train", caplog)
    assert "not cached" in said and f"set {fileindex.CACHE_VARIABLE}" in said
    assert result == _fresh_scan(tmp_path / "data" / "train")


def test_the_path_table_gives_back_every_path_names_that_are_not_utf8_included(tmp_path, cache):
    odd = os.fsdecode(b"n00000001_caf\xe9.JPEG")  # Latin-1 from an old archive: not UTF-8
    paths = [f"/data/train/n00000001/{odd}", "/data/train/n00000002/b.JPEG", "relative.JPEG", "/x/é.png"]
    table = PathTable(paths)
    assert list(table) == paths and len(table) == 4 and table[-1] == paths[-1]
    with pytest.raises(IndexError):
        table[4]
    # Through the index, a real file of that name decodes.
    folder = tmp_path / "data" / "train" / "n00000001"
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 12), (200, 10, 10)).save(os.path.join(os.fsencode(folder), os.fsencode(odd)), "JPEG")
    classes, source_paths, labels, _ = scan_class_folders(tmp_path / "data" / "train")
    names = source_paths.names()
    from semisup.data.datasets import FileSource
    image = FileSource(source_paths, labels).load(0)
    assert names == [odd] and image.shape == (3, 12, 16) and image[0].float().mean() > 150


def test_a_file_changed_after_its_decode_check_is_checked_again(tmp_path, cache):
    from semisup.data.imagenet import read_sizes
    make_tree(tmp_path / "data", bad=False)
    paths = sorted(str(p) for p in (tmp_path / "data" / "val").iterdir())
    calls = []

    def check(todo):
        calls.append(len(todo))
        return read_sizes(todo, decode=True)
    first = fileindex.checked_sizes(tmp_path / "data", paths, check)
    assert all(first) and calls == [len(paths)]
    assert fileindex.checked_sizes(tmp_path / "data", paths, check) == first and calls == [len(paths)]
    data = open(paths[0], "rb").read()
    with open(paths[0], "wb") as f:  # truncated after the first check: found by the second
        f.write(data[: len(data) // 2])
    again = fileindex.checked_sizes(tmp_path / "data", paths, check)
    assert calls == [len(paths), 1] and again[0] is None and again[1:] == first[1:]


def test_an_annotation_edited_after_it_was_parsed_is_parsed_again(tmp_path, cache):
    from semisup.data.boxes import load_voc_folder
    info = make_tree(tmp_path / "data", bad=False)
    boxes = tmp_path / "data" / "boxes"
    first = load_voc_folder(boxes)
    again = load_voc_folder(boxes)  # from the cache: the same boxes
    assert first.keys() == again.keys() and all(
        first[k].size == again[k].size and all(np.array_equal(first[k].by_class[c], again[k].by_class[c])
                                               for c in first[k].by_class) for k in first)
    image_id, wnid, size, _ = info["val"][0]
    xml = boxes / f"{image_id}.xml"
    xml.write_text(xml.read_text().replace(f"<name>{wnid}</name>", "<name>n00000003</name>"))
    edited = load_voc_folder(boxes)
    assert list(edited[image_id].by_class) == ["n00000003"]


def test_macos_companion_files_are_skipped_not_counted_unreadable(tmp_path, cache):
    """An archive made on a Mac holds a ``._name.JPEG`` beside every image: metadata, not images."""
    make_tree(tmp_path / "data", bad=False)
    root = tmp_path / "data" / "train"
    images = sorted(root.rglob("*.JPEG"))
    for path in images:
        (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    classes, paths, labels, skipped = scan_class_folders(root)
    assert len(paths) == len(images) and skipped == len(images)
    assert not any(os.path.basename(p).startswith("._") for p in paths)


def test_a_split_of_names_that_are_not_utf8_is_written_read_and_digested(tmp_path):
    """A custom split over a folder with a Latin-1 file name: written, read back and digested
    (the digest and the split file's write ended such a run with UnicodeEncodeError)."""
    from semisup.data.splits import dataset_digest, read_split, write_split
    odd = os.fsdecode(b"n00000001_caf\xe9.JPEG")
    names = ["n00000001_a.JPEG", odd]
    write_split(names, tmp_path / "split.txt")
    assert read_split(tmp_path / "split.txt") == names
    assert dataset_digest(names) != dataset_digest(names[:1])
    assert dataset_digest(["n00000001_a.JPEG"]) == __import__("hashlib").sha256(b"n00000001_a.JPEG").hexdigest()[:8]


def test_an_annotation_folder_with_a_link_back_up_is_read_once(tmp_path, cache):
    """A symbolic link to a parent inside --val-boxes: not followed (as rglob did not), not a walk for ever."""
    from semisup.data.boxes import load_voc_folder
    make_tree(tmp_path / "data", bad=False)
    boxes = tmp_path / "data" / "boxes"
    (boxes / "loop").symlink_to(boxes)
    assert len(load_voc_folder(boxes)) == len(list(boxes.glob("*.xml")))


def test_class_names_with_a_line_break_survive_the_annotation_cache(tmp_path, cache):
    from semisup.data.boxes import load_voc_folder
    from tests.imagenet_tree import voc_xml
    folder = tmp_path / "boxes"
    folder.mkdir()
    (folder / "a.xml").write_text(voc_xml((40, 30), [("n01&#10;x", (2, 2, 10, 10)), ("n02", (3, 3, 9, 9))]))
    first, again = load_voc_folder(folder), load_voc_folder(folder)
    assert list(first["a"].by_class) == list(again["a"].by_class) == ["n01\nx", "n02"]

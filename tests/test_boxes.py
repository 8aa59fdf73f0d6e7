"""--val-boxes is read by the registered box reader that recognises it: VOC XML folders and CUB's
bounding_boxes.txt as before (same boxes, same messages), a new format by one registration."""
import json

import numpy as np
import pytest

from semisup.data.boxes import BoxFileError, ImageBoxes, box_reader_of, load_boxes, load_cub_boxes, register_box_reader
from semisup.registry import BOX_FORMATS
from tests.imagenet_tree import voc_xml


@pytest.fixture
def registered(monkeypatch):
    """Box readers registered for one test only (the registry is the process's)."""
    BOX_FORMATS.names()
    monkeypatch.setattr(BOX_FORMATS, "_entries", dict(BOX_FORMATS._entries))


def _cub(folder):
    folder.mkdir()
    (folder / "images.txt").write_text("1 001.Albatross/A_1.jpg\n")
    (folder / "bounding_boxes.txt").write_text("1 60.0 27.0 325.0 304.0\n")
    return folder / "bounding_boxes.txt"


def test_the_package_formats_are_recognised_and_read_as_before(tmp_path):
    (tmp_path / "voc" / "sub").mkdir(parents=True)
    (tmp_path / "voc" / "sub" / "v_1.xml").write_text(voc_xml((40, 30), [("n01", (1, 2, 10, 20))]))
    cub = _cub(tmp_path / "cub")
    assert box_reader_of(tmp_path / "voc").name == "voc-xml" and box_reader_of(cub).name == "cub"
    voc = load_boxes(tmp_path / "voc")
    assert set(voc) == {"v_1"} and voc["v_1"].size == (30, 40)  # (H, W) from <size>
    np.testing.assert_array_equal(voc["v_1"].of_class("n01"), [[0, 1, 10, 20]])  # VOC's 1-based inclusive corners
    np.testing.assert_array_equal(load_boxes(cub)["A_1"].of_class("001.Albatross"),
                                  load_cub_boxes(cub)["A_1"].of_class("001.Albatross"))


def test_paths_no_reader_recognises_keep_their_messages(tmp_path):
    unknown = r"^--val-boxes .*missing: not a folder of XML files \(nor a file a registered box format recognises"
    with pytest.raises(BoxFileError, match=unknown):
        load_boxes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxFileError, match=r"empty: no \.xml files found$"):
        load_boxes(tmp_path / "empty")
    (tmp_path / "boxes.csv").write_text("a,b\n")
    with pytest.raises(BoxFileError, match="not a folder of XML files"):
        load_boxes(tmp_path / "boxes.csv")
    cub = _cub(tmp_path / "cub")
    (tmp_path / "cub" / "images.txt").unlink()
    with pytest.raises(BoxFileError, match="CUB boxes need images.txt beside bounding_boxes.txt"):
        load_boxes(cub)


def test_a_registered_reader_reads_its_format_and_two_claiming_one_path_are_refused(tmp_path, registered):
    @register_box_reader("json-boxes", recognises=lambda path: path.suffix == ".json")
    def read_json_boxes(path):
        """{"<image id>": {"<class>": [[xmin, ymin, xmax, ymax], ...]}}."""
        return {image: ImageBoxes(None, {c: np.array(b, np.float32) for c, b in classes.items()})
                for image, classes in json.loads(path.read_text()).items()}

    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"img_7": {"n02": [[1, 2, 3, 4]]}}))
    assert "json-boxes" in BOX_FORMATS.names() and box_reader_of(path).summary.startswith('{"<image id>"')
    np.testing.assert_array_equal(load_boxes(path)["img_7"].of_class("n02"), [[1, 2, 3, 4]])
    register_box_reader("any-json", recognises=lambda path: path.suffix == ".json")(read_json_boxes)
    with pytest.raises(BoxFileError, match="read by any-json and json-boxes alike"):
        load_boxes(path)

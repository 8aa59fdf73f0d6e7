"""The ImageNet data path on a generated folder: splits, datasets, boxes, bad files, dry run."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from semisup.config import parse_config
from semisup.data.boxes import box_mask, parse_voc_xml, scale_boxes
from semisup.data.datasets import FileSource, TrainDataset
from semisup.data.imagenet import build_folder_bundle, scan_class_folders
from semisup.data.settings import DataSettings
from semisup.data.splits import STANDARD, SplitError, read_split, standard_split_path, stratified_split, synset_of
from semisup.eval.evaluator import content_heatmap
from semisup.method import cgc
from semisup.run import main
from tests.imagenet_tree import WNIDS, make_tree


@pytest.fixture()
def tree(tmp_path):
    info = make_tree(tmp_path / "imagenet")
    return tmp_path / "imagenet", info


def folder_args(root, tmp_path, *extra):
    return ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet_tiny", "--image-size", "64",
            "--resize-size", "72", "--ch-short-side", "64", "--workers", "0", "--splits-dir", str(tmp_path / "splits"),
            "--batch-labeled", "4", "--batch-unlabeled", "4", "--gallery", "0", *extra]


def test_standard_split_files(shared_splits):
    for fraction, (name, digest) in STANDARD.items():
        path = shared_splits / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert standard_split_path(fraction, shared_splits) == path
    names = read_split(shared_splits / "1percent.txt")
    assert len(names) == 12811 and len(set(names)) == 12811
    per_class = np.unique([synset_of(n) for n in names], return_counts=True)[1]
    assert len(per_class) == 1000 and per_class.min() == 12 and per_class.max() == 13
    assert len(read_split(shared_splits / "10percent.txt")) == 128116


def test_missing_standard_split_names_the_download_command(tmp_path):
    with pytest.raises(SplitError, match="semisup-splits download"):
        standard_split_path(0.01, tmp_path)
    (tmp_path / "1percent.txt").write_text("n01_1.JPEG\n")
    with pytest.raises(SplitError, match="sha256"):
        standard_split_path(0.01, tmp_path)


def test_custom_fraction_is_stratified_and_reproducible():
    by_class = {f"n{c:08d}": [f"n{c:08d}_{k}.JPEG" for k in range(40 + 10 * c)] for c in range(5)}
    a = stratified_split(by_class, 0.1, seed=0)
    assert a == stratified_split(by_class, 0.1, seed=0)
    assert a != stratified_split(by_class, 0.1, seed=1)
    counts = {w: sum(synset_of(n) == w for n in a) for w in by_class}
    assert counts == {w: round(0.1 * len(v)) for w, v in by_class.items()}


def test_class_indices_match_torchvision_imagefolder(tree):
    root, _ = tree
    classes, paths, labels, skipped = scan_class_folders(root / "train")
    reference = torchvision.datasets.ImageFolder(root / "train")
    assert classes == reference.classes
    assert [(p, label) for p, label in zip(paths, labels)] == [(str(p), label) for p, label in reference.samples]
    assert skipped == 1  # notes.txt


def test_bad_and_odd_files_are_handled(tree):
    root, info = tree
    classes, paths, labels, _ = scan_class_folders(root / "train")
    source = FileSource(paths, labels)
    for odd in (f"{WNIDS[1]}_0.JPEG", f"{WNIDS[2]}_0.JPEG", f"{WNIDS[2]}_1.JPEG"):  # PNG inside, grayscale, CMYK
        image = source.load(next(i for i, p in enumerate(paths) if p.endswith(odd)))
        assert image.shape[0] == 3 and image.dtype == torch.uint8
    truncated = paths.index(str(info["truncated"]))
    dataset = TrainDataset(source, np.arange(len(paths)), 64, 72, 0.08, crop=False, pair=True)
    item = dataset[(truncated, 0)]
    assert item["bad"] == 1  # skipped, counted, replaced by the next readable image
    assert item["view"].shape == (3, 64, 64) and item["aug"].shape == (3, 64, 64)


def test_pair_box_and_flip_reproduce_the_augmented_view(tree):
    root, _ = tree
    classes, paths, labels, _ = scan_class_folders(root / "train")
    dataset = TrainDataset(FileSource(paths, labels), np.arange(1, len(paths)), 64, 72, 0.08, crop=False, pair=True)
    flips = set()
    for seed in range(12):
        item = dataset[(seed % len(dataset), seed)]
        view = item["view"].float()
        # transform_cam on each channel of the view, as if the view's pixels were a heatmap.
        warped = cgc.transform_cam(view, item["box"].expand(3, 4), item["flip"].expand(3), 64)
        diff = (warped - item["aug"].float()).abs()
        assert diff[:, 2:-2, 2:-2].mean() < 2.0, (seed, diff.mean())  # of 255; edges interpolate differently
        flips.add(bool(item["flip"]))
    assert flips == {True, False}


def test_voc_boxes_are_zero_based_and_scale_with_the_image(tree):
    root, info = tree
    image_id, wnid, (w, h), (x0, y0, x1, y1) = info["val"][0]
    boxes = parse_voc_xml(root / "boxes" / f"{image_id}.xml")
    assert boxes.size == (h, w)
    np.testing.assert_array_equal(boxes.of_class(wnid), [[x0 - 1, y0 - 1, x1, y1]])
    assert box_mask(boxes.of_class(wnid), h, w).sum() == (x1 - x0 + 1) * (y1 - y0 + 1)
    scaled = scale_boxes(boxes.of_class(wnid), (h, w), (2 * h, 2 * w))
    assert box_mask(scaled, 2 * h, 2 * w).sum() == 4 * (x1 - x0 + 1) * (y1 - y0 + 1)
    # A uniform heatmap computed at any resolution has CH = the box's share of the image.
    ch, _, zero = content_heatmap(torch.ones(1, 3, 5), [boxes.of_class(wnid)], (h, w))
    assert not zero.any()
    assert ch.item() == pytest.approx((x1 - x0 + 1) * (y1 - y0 + 1) / (h * w))


def test_split_naming_missing_files_is_a_clear_error(tree, tmp_path):
    root, _ = tree
    split = tmp_path / "bad_split.txt"
    split.write_text(f"{WNIDS[0]}_1.JPEG\n{WNIDS[0]}_999.JPEG\nn99999999_1.JPEG\n")
    with pytest.raises(SplitError, match="n99999999"):
        build_folder_bundle(DataSettings.of(parse_config(folder_args(root, tmp_path, "--split-file", str(split)))))
    split.write_text(f"{WNIDS[0]}_1.JPEG\n{WNIDS[0]}_999.JPEG\n")
    with pytest.raises(SplitError, match=r"1 files not found.*_999"):
        build_folder_bundle(DataSettings.of(parse_config(folder_args(root, tmp_path, "--split-file", str(split)))))


def test_dry_run_summary_and_a_short_run_on_the_folder(tree, tmp_path, capsys):
    root, _ = tree
    assert main(folder_args(root, tmp_path, "--labeled-fraction", "0.5", "--dry-run")) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in ("dry run", "classes 3", "labeled 12", "validation 9", "validation_with_boxes 9", "bad_files_found 0",
                 "unlabeled_sample_decoded 24", "unlabeled_sample_unreadable 1",  # the truncated file, found before training
                 "negatives_per_anchor 3"):  # a global batch of 4 is one group: 3 negatives (the released 128 in 64s: 63)
        assert line in out, out
    (split,) = (tmp_path / "splits").glob("0.5-seed0-*.txt")  # named by fraction, seed and the dataset's digest
    assert len(read_split(split)) == 12  # written, so the run is reproducible from its file
    # A split holding the truncated file: the dry run finds it before any GPU hour is spent.
    with_bad = tmp_path / "with_bad.txt"
    with_bad.write_text(f"{WNIDS[0]}_0.JPEG\n{WNIDS[1]}_1.JPEG\n")
    assert main(folder_args(root, tmp_path, "--split-file", str(with_bad), "--dry-run")) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "labeled 2" in out and "bad_files_found 1" in out, out
    bundle = build_folder_bundle(DataSettings.of(parse_config(folder_args(root, tmp_path, "--labeled-fraction", "0.5", "--unlabeled", "rest"))))
    assert len(bundle.unlabeled_indices) == len(bundle.labeled.paths) - 12
    run = ["--labeled-fraction", "0.5", "--epochs", "2", "--run-dir", str(tmp_path / "run")]
    # The truncated file is in the unlabeled stream: 1 bad in 24 loads is over the default limit.
    assert main(folder_args(root, tmp_path, *run)) == 1
    assert "1 unreadable images among 24" in capsys.readouterr().err
    assert main(folder_args(root, tmp_path, *run, "--max-bad-fraction", "0.1")) == 0
    out = capsys.readouterr().out
    assert "cgc 0.5 final ep2" in out and "cgc 0.5 best* ep" in out


def test_gpu_decode_path_gives_the_cpu_path_crops(tree):
    """The --decode gpu path, run on the CPU: same random parameters, same crops up to the two
    JPEG decoders' rounding; odd and broken files handled as on the CPU path."""
    from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
    root, info = tree
    classes, paths, labels, _ = scan_class_folders(root / "train")
    source = FileSource(paths, labels)
    cpu = TrainDataset(source, np.arange(len(paths)), 64, 72, 0.08, crop=True, pair=True)
    encoded = EncodedTrainDataset(source, np.arange(len(paths)), 64, 72, 0.08, crop=True, pair=True)
    keys = [(i, 100 + i) for i in range(len(paths))]
    batch = decode_and_transform(collate_encoded([encoded[k] for k in keys]), torch.device("cpu"), 64, 72)
    reference = [cpu[k] for k in keys]
    for n, item in enumerate(reference):
        assert torch.equal(batch["box"][n], item["box"]) and bool(batch["flip"][n]) == bool(item["flip"])
        assert batch["label"][n] == item["label"] and batch["bad"][n] == item["bad"]
        for key in ("image", "view", "aug"):
            diff = (batch[key][n].float() - item[key].float()).abs()
            assert diff.mean() < 1.5, (paths[n], key, diff.mean())  # of 255: decoder rounding, not another crop
    truncated = paths.index(str(info["truncated"]))
    assert batch["bad"][truncated] == 1  # replaced by the next readable file, and counted


def test_the_report_says_what_share_a_custom_split_file_labeled(tmp_path, capsys):
    """--split-file decides the labeled set, not --labeled-fraction (left at its 1 % default): the
    report's Labeled column counts what the file labeled."""
    from semisup.tools.report import main as report_main
    root = tmp_path / "imagenet"
    make_tree(root, bad=False)
    split = tmp_path / "half.txt"
    split.write_text("".join(f"{w}_{k}.JPEG\n" for w in WNIDS for k in range(4)))  # 12 of 24
    run_dir = tmp_path / "run"
    assert main(folder_args(root, tmp_path, "--split-file", str(split), "--epochs", "1", "--max-steps", "1",
                            "--run-dir", str(run_dir))) == 0
    capsys.readouterr()
    assert report_main([str(run_dir)]) == 0
    ours = capsys.readouterr().out.split("### Published")[0]
    assert "| 50%" in ours and "| 1%" not in ours, ours


def test_a_limited_label_split_of_any_image_folder_stratifies_by_class_folder(tmp_path):
    """File names that do not begin with their class (``train/cardinal/img0.jpg``, the same name in
    two folders): a 0.5 split draws half of each class folder, names its files
    ``<class>/<file>`` and reads them back; ImageNet's names keep SimCLR's form (the test above)."""
    from semisup.data.imagenet import build_folder_bundle
    from tests.imagenet_tree import save_image
    rng = np.random.default_rng(0)
    for part, count in (("train", 6), ("val", 2)):
        for cls in ("cardinal", "sparrow"):
            for i in range(count):
                (tmp_path / "data" / part / cls).mkdir(parents=True, exist_ok=True)
                save_image(tmp_path / "data" / part / cls / f"img{i}.jpg", rng, size=(40, 32))
    args = ["--data", str(tmp_path / "data"), "--labeled-fraction", "0.5", "--splits-dir", str(tmp_path / "splits"),
            "--arch", "resnet_tiny", "--image-size", "32", "--resize-size", "36", "--batch-unlabeled", "4"]
    bundle = build_folder_bundle(DataSettings.of(parse_config(args)))
    labels = np.asarray(bundle.labeled.labels)[bundle.labeled_indices]
    assert sorted(np.bincount(labels).tolist()) == [3, 3]  # half of each folder, not of a name prefix
    (split,) = (tmp_path / "splits").glob("0.5-seed0-*.txt")
    entries = read_split(split)
    assert len(entries) == 6 and all(e.split("/")[0] in ("cardinal", "sparrow") for e in entries), entries
    labeled_paths = sorted(str(Path(bundle.labeled.paths[i]).relative_to(tmp_path / "data" / "train"))
                           for i in bundle.labeled_indices)
    assert labeled_paths == sorted(entries)  # the split file names exactly the files trained on
    again = build_folder_bundle(DataSettings.of(parse_config(args)))  # read back from its file, not drawn again
    assert again.labeled_indices.tolist() == bundle.labeled_indices.tolist()
    plain = tmp_path / "plain.txt"  # a --split-file of bare names for such a folder: said what a line is here
    plain.write_text("img_0.jpg\nimg_1.jpg\n")
    with pytest.raises(SplitError, match=r"plain.txt: lists file names.*<class folder>/<file name> here"):
        build_folder_bundle(DataSettings.of(parse_config([*args[:2], "--split-file", str(plain), *args[4:]])))

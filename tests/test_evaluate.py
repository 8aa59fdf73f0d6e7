"""Content Heatmap, batched evaluation, kNN and the results report."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from semisup.config import parse_config
from semisup.data import transforms as T
from semisup.data.datasets import DataBundle, EvalSet, FileSource
from semisup.errors import UsageError
from semisup.eval.evaluator import Evaluator, content_heatmap, released_swav_cams
from semisup.eval.knn import knn_classify
from semisup.method import cgc, explainers
from semisup.models.base import build_model
from semisup.tools.report import ablation_table, full_supervision_table, limited_label_table, load_runs
from tests.imagenet_tree import save_image


def test_content_heatmap_known_answers():
    cam = torch.zeros(1, 10, 20)
    cam[0, 2:6, 4:10] = 1.0  # all mass in rows 2-5, columns 4-9
    inside = np.array([[4, 2, 10, 6]])  # (xmin, ymin, xmax, ymax), max exclusive
    ch, strict, zero = content_heatmap(cam, [inside], (10, 20))
    # 1e-8 per cell outside the box (176 cells here) is what the published protocol adds.
    assert ch.item() == pytest.approx(1.0, abs=2e-6) and strict.item() == ch.item() and not zero.any()
    ch, _, _ = content_heatmap(cam, [np.array([[4, 2, 7, 6]])], (10, 20))  # left half of the mass
    assert ch.item() == pytest.approx(0.5, abs=2e-6)
    ch, _, _ = content_heatmap(cam, [np.zeros((0, 4))], (10, 20))  # no box: nothing inside
    assert ch.item() == pytest.approx(0, abs=1e-6)
    # Overlapping boxes count their union once; a box beyond the border is clipped.
    ch, _, _ = content_heatmap(cam, [np.array([[4, 2, 10, 6], [5, 3, 30, 40]])], (10, 20))
    assert ch.item() == pytest.approx(1.0, abs=2e-6)
    # Uniform heatmap at feature resolution, image 40 x 60: CH = box area share.
    ch, _, _ = content_heatmap(torch.ones(1, 4, 6), [np.array([[0, 0, 30, 40]])], (40, 60))
    assert ch.item() == pytest.approx(0.5)


def test_all_zero_heatmap_scores_the_box_area_under_the_published_protocol():
    # The released scripts add 1e-8 after normalising: an all-zero map becomes uniform, its
    # spatial sum is positive, the "zero" branch never fires and CH is the boxes' area share.
    box = np.array([[10, 5, 40, 25]])  # 30 x 20 of a 60 x 40 image: 25 %
    ch, strict, zero = content_heatmap(torch.zeros(2, 4, 6), [box, np.array([[0, 0, 60, 20]])], (40, 60))
    assert zero.all()
    assert ch.tolist() == pytest.approx([0.25, 0.5])
    assert strict.tolist() == [0.0, 0.0]


def test_released_swav_protocol_explains_a_feature_channel_not_the_class():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 3).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, features = model(image)
    box = np.array([[8, 8, 40, 48]])
    label = 2
    # By hand: channel `label` of layer4 (relu'd, already non-negative), normalised with 1e-8 as
    # the released script does, bilinearly resized to the image, its mass inside the box.
    channel = features[0, label].clamp_min(0)
    hand_map = channel / (channel.sum() + 1e-8) + 1e-8
    up = F.interpolate(hand_map[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0].double()
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[8:48, 8:40] = True
    hand = (up * mask).sum() / up.sum()
    cams = released_swav_cams(features, torch.tensor([label]))
    ours = content_heatmap(cams, [box], (64, 64))[0]
    assert ours.item() == pytest.approx(hand.item(), rel=1e-9)
    # It is not the Grad-CAM of the class (the released 1 % CH script's model has no head).
    gradcam = content_heatmap(explainers.gradcam(model, logits, features, torch.tensor([label])), [box], (64, 64))[0]
    assert abs(gradcam.item() - ours.item()) > 1e-3
    assert released_swav_cams(features, torch.tensor([features.shape[1]])) is None  # no such channel


def mixed_size_eval(tmp_path, n=10):
    rng = np.random.default_rng(0)
    sizes = [(72, 96), (96, 72), (80, 80)]
    paths, labels, boxes, hw = [], [], [], []
    for i in range(n):
        h, w = sizes[i % 3]
        path = tmp_path / f"v{i}.jpg"
        save_image(path, rng, size=(w, h), class_index=i % 3)
        paths.append(str(path)), labels.append(i % 3), hw.append((h, w))
        boxes.append(np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]) if i != 4 else np.zeros((0, 4)))
    source = FileSource(paths, labels)
    bundle = DataBundle(["a", "b", "c"], source, np.arange(n), None, None, EvalSet(source, boxes, hw), {})
    cfg = parse_config(["--ch-short-side", "64", "--image-size", "64", "--resize-size", "72", "--workers", "0", "--knn-k", "3"])
    return bundle, cfg


def test_batched_content_heatmap_equals_one_image_at_a_time(tmp_path):
    bundle, cfg = mixed_size_eval(tmp_path)
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 3).eval()
    batched = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=4).content_heatmap(model, progress=False)
    # Reference: each image alone, standard Grad-CAM by autograd (spatially pooled gradients).
    values, stricts, zeros = [], [], 0
    for i in range(len(bundle.val.source)):
        image = T.TF.resize(bundle.val.source.load(i), [64], antialias=True).unsqueeze(0)
        logits, features = model(T.normalize(image))
        cam = cgc.gradcam_pooled(logits, features, torch.tensor([bundle.val.source.labels[i]]))
        ch, strict, zero = content_heatmap(cam, [bundle.val.boxes[i]], bundle.val.sizes[i])
        zeros += int(zero)
        values.append(ch.item()), stricts.append(strict.item())
    assert batched["ch_images"] == 10 and batched["ch_zero"] == zeros
    # Equal to 1e-6 as a fraction (1e-4 in percent): float32 closed form vs autograd.
    assert batched["ch"] == pytest.approx(100 * np.mean(values), abs=1e-4)
    assert batched["ch_strict"] == pytest.approx(100 * np.mean(stricts), abs=1e-4)


def test_full_evaluation_runs_and_counts(tmp_path):
    bundle, cfg = mixed_size_eval(tmp_path)
    result = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=4).run(build_model("resnet_tiny", 3), progress=False)
    assert 0 <= result["top1"] <= result["top5"] <= 100
    assert np.isfinite(result["cgc_val_loss"]) and 0 <= result["knn_top1"] <= 100


def test_evaluation_loaders_take_the_workers_of_both_training_streams(tmp_path):
    """While the model is evaluated the training streams' workers wait: the evaluation decodes
    with as many (2 x --workers with an unlabeled stream, --workers without), and gives the same
    numbers as a single-process evaluation."""
    bundle, cfg = mixed_size_eval(tmp_path)
    workers = parse_config(["--ch-short-side", "64", "--image-size", "64", "--resize-size", "72", "--workers", "2"])
    semi = DataBundle(bundle.classes, bundle.labeled, bundle.labeled_indices, bundle.labeled, bundle.labeled_indices,
                      bundle.val, {})
    assert Evaluator(workers, semi, torch.device("cpu"))._loader(semi.val.source).num_workers == 4
    assert Evaluator(workers, bundle, torch.device("cpu"))._loader(bundle.val.source).num_workers == 2
    model = build_model("resnet_tiny", 3)
    one = Evaluator(cfg, semi, torch.device("cpu"), batch_size=4).run(model, progress=False, full=False)
    four = Evaluator(workers, semi, torch.device("cpu"), batch_size=4).run(model, progress=False, full=False)
    assert {k: v for k, v in one.items() if k != "eval_seconds"} == {k: v for k, v in four.items() if k != "eval_seconds"}


def test_validation_cache_gives_the_decoded_numbers_and_is_rebuilt_when_damaged_or_stale(tmp_path, monkeypatch, caplog):
    from semisup.data import datasets as data
    from semisup.data import valcache
    bundle, cfg = mixed_size_eval(tmp_path)
    # An unreadable image: a black crop, counted as bad; in Content Heatmap a black image of its
    # recorded size, so that it stacks with its size group (it used to end the evaluation).
    (tmp_path / "v3.jpg").write_bytes(b"not a jpeg")
    cache = tmp_path / "cache"
    cached_cfg = parse_config(["--ch-short-side", "64", "--image-size", "64", "--resize-size", "72", "--workers", "0",
                               "--knn-k", "3", "--val-cache", str(cache)])
    model = build_model("resnet_tiny", 3)
    evaluate = lambda c: {k: v for k, v in Evaluator(c, bundle, torch.device("cpu"), batch_size=4).run(
        model, progress=False).items() if k != "eval_seconds"}
    decoded = evaluate(cfg)
    assert decoded["bad_val_images"] == 1
    assert evaluate(cached_cfg) == decoded  # the first evaluation builds the cache
    [array] = cache.glob("val-*.u8")
    assert array.stat().st_size == 10 * 3 * 64 * 64
    # Later evaluations read it: top-1 decodes nothing (CH and kNN still do, at their sizes).
    monkeypatch.setattr(bundle.val.source, "load", lambda *a, **k: 1 / 0)
    top1 = Evaluator(cached_cfg, bundle, torch.device("cpu"), batch_size=4).run(model, progress=False, full=False)
    assert (top1["top1"], top1["top5"], top1["bad_val_images"]) == (decoded["top1"], decoded["top5"], 1)
    monkeypatch.undo()
    with open(array, "r+b") as f:  # truncated, as by a full disk
        f.truncate(100)
    with caplog.at_level("WARNING"):
        assert evaluate(cached_cfg) == decoded
    assert "damaged" in caplog.text and array.stat().st_size == 10 * 3 * 64 * 64
    os.utime(tmp_path / "v0.jpg", ns=(1, 1))  # a validation file changed: another key, another cache
    assert evaluate(cached_cfg) == decoded and len(list(cache.glob("val-*.u8"))) == 2
    assert valcache.open_cache(cache, data.EvalDataset(bundle.val.source, 72, 64)) is not None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert evaluate(parse_config(["--ch-short-side", "64", "--image-size", "64", "--resize-size", "72", "--workers",
                                      "0", "--knn-k", "3", "--val-cache", str(blocked)])) == decoded
    assert "cannot write the cache" in caplog.text


def test_knn_recovers_labels_of_well_separated_features():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 32, generator=g), dim=1)
    labels = torch.arange(5).repeat_interleave(30)
    bank = F.normalize(centres[labels] + 0.05 * torch.randn(150, 32, generator=g), dim=1)
    query_labels = torch.arange(5).repeat(8)
    queries = F.normalize(centres[query_labels] + 0.05 * torch.randn(40, 32, generator=g), dim=1)
    assert torch.equal(knn_classify(bank, labels, queries, k=20, temperature=0.07), query_labels)
    # Shuffled bank labels: chance level, so the vote really uses the neighbours' labels.
    shuffled = labels[torch.randperm(150, generator=g)]
    assert (knn_classify(bank, shuffled, queries, k=20) == query_labels).float().mean() < 0.6


def fake_run(path, method, fraction, seed, top1, ch, arch="resnet50", pretrained="pretrained/swav_800ep_pretrain.pth.tar", weight=0.25,
             data_override="/data/imagenet", **settings):
    path.mkdir(parents=True)
    weight = 0 if method == "ce" else weight
    (path / "config.yaml").write_text(yaml.safe_dump(dict(labeled_fraction=fraction, arch=arch, pretrained=pretrained,
                                                          data=data_override, seed=seed, cgc_weight=weight, **settings)))
    final = dict(top1=top1, top5=top1 + 20, ch=ch, ch_strict=ch - 1, cgc_val_loss=4.0, knn_top1=40.0)
    best = dict(final, epoch=7, top1=top1 + 1)
    (path / "final.json").write_text(json.dumps(dict(method=method, final=final, best=best)))


def test_report_builds_the_published_layouts(tmp_path):
    for seed, (ce, cgc_) in enumerate([(54.0, 55.0), (54.2, 55.4), (53.8, 55.2)]):
        fake_run(tmp_path / f"ce{seed}", "ce", 0.01, seed, ce, 46.0 + seed)
        fake_run(tmp_path / f"cgc{seed}", "cgc", 0.01, seed, cgc_, 47.0)
    fake_run(tmp_path / "full", "cgc", 1.0, 0, 74.4, 62.0)
    (tmp_path / "unfinished").mkdir()
    runs = load_runs(sorted(tmp_path.iterdir()))
    assert len(runs) == 7
    limited = limited_label_table(runs).set_index("Method")
    assert limited.loc["Cross-entropy", "Top-1"] == "54.00 ± 0.20"
    assert limited.loc["CGC", "Top-1"] == "55.20 ± 0.20"
    assert limited.loc["Cross-entropy", "CH"] == "47.00 ± 1.00"
    assert limited.loc["CGC", "Start"] == "swav_800ep_pretrain" and limited.loc["CGC", "Seeds"] == 3
    assert limited.loc["CGC", "Top-1 best*"] == "56.20 ± 0.20"  # the best epoch, beside the final one
    assert limited.loc["CGC", "CH rel. SwAV"] == "–"  # not in these runs' results
    assert "Top-5" in limited.columns  # the runs' class count is unknown (older runs): shown
    full = full_supervision_table(runs)
    assert full.iloc[0][["Architecture", "Method", "Top-1", "CH", "CGC Loss"]].tolist() == ["resnet50", "CGC", "74.40", "62.00", "4.0000"]


def test_ablation_table_groups_by_the_setting_and_fills_settings_older_runs_lack(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / f"ce{seed}", "ce", 0.1, seed, 30.0 + seed, 25.0)
        fake_run(tmp_path / f"l1-{seed}", "cgc", 0.1, seed, 31.0 + 2 * seed, 36.0, weight=0.1)
        fake_run(tmp_path / f"l25-{seed}", "cgc", 0.1, seed, 25.0, 44.0 + seed, weight=0.25)
    runs = load_runs(sorted(tmp_path.iterdir()), settings=("cgc_weight", "cgc_warmup_epochs"))
    assert set(runs["cgc_warmup_epochs"]) == {0.0}  # absent from these configs: the dataclass default
    table = ablation_table(runs, "cgc_weight")
    assert table[["Method", "cgc_weight", "Top-1", "Seeds"]].values.tolist() == [
        ["Cross-entropy", "–", "30.50 ± 0.71", 2], ["CGC", "0.1", "32.00 ± 1.41", 2], ["CGC", "0.25", "25.00 ± 0.00", 2]]
    assert table.set_index("cgc_weight").loc["0.25", "CH"] == "44.50 ± 0.71"
    with pytest.raises(UsageError, match="no setting 'lamda'"):
        load_runs([tmp_path / "ce0"], settings=("lamda",))


def test_report_never_averages_different_settings_and_counts_distinct_seeds(tmp_path, capsys):
    # Three seeds at lambda 0.1 for 50 epochs, one at lambda 0.5, one of 2 epochs, a rerun of seed 0,
    # and one evaluated on a subset of the validation set.
    for seed in range(3):
        fake_run(tmp_path / f"a{seed}", "cgc", 0.01, seed, 55.0 + seed, 47.0, weight=0.1)
    fake_run(tmp_path / "b0", "cgc", 0.01, 0, 40.0, 50.0, weight=0.5)
    fake_run(tmp_path / "c0", "cgc", 0.01, 0, 30.0, 40.0, weight=0.1, epochs=2)
    fake_run(tmp_path / "a0-2", "cgc", 0.01, 0, 56.0, 47.0, weight=0.1)  # run.py's folder for a rerun of the same seed
    fake_run(tmp_path / "d0", "cgc", 0.01, 1, 20.0, 30.0, weight=0.1, max_eval_images=64)
    # Insertion AUC, appended by evaluate.py for the final checkpoint (a later line wins; a cut line is skipped).
    for seed, value in enumerate((60.0, 62.0, 64.0)):
        run = tmp_path / ("a0-2" if seed == 0 else f"a{seed}")
        lines = [json.dumps(dict(checkpoint=str(run / "checkpoint.pt"), iauc=value - 10)),
                 json.dumps(dict(checkpoint=str(run / "model_best.pt"), iauc=0.0)),
                 json.dumps(dict(checkpoint=str(run / "checkpoint.pt"), iauc=value, dauc=10.0)), '{"checkpoint": "cut']
        (run / "eval.jsonl").write_text("\n".join(lines))
    table = limited_label_table(load_runs(sorted(tmp_path.iterdir())))
    assert "same settings and seed 0" in capsys.readouterr().err
    rows = {row["Settings"]: row for row in table.to_dict("records")}
    assert set(rows) == {"lambda 0.1, epochs 50, max-eval-images none", "lambda 0.5, epochs 50, max-eval-images none",
                         "lambda 0.1, epochs 2, max-eval-images none", "lambda 0.1, epochs 50, max-eval-images 64"}, table
    a = rows["lambda 0.1, epochs 50, max-eval-images none"]
    assert a["Seeds"] == 3 and a["Top-1"] == "56.33 ± 0.58"  # seeds 0 (the newer run), 1, 2: never the 2-epoch or 0.5 run
    assert a["IAUC"] == "62.00 ± 2.00" and a["DAUC"] == "10.00 ± 0.00"
    assert rows["lambda 0.5, epochs 50, max-eval-images none"]["Top-1"] == "40.00"
    assert rows["lambda 0.1, epochs 2, max-eval-images none"]["Top-1"] == "30.00"
    assert rows["lambda 0.1, epochs 50, max-eval-images 64"]["Seeds"] == "1 (evaluated on ≤ 64 val images)"


def test_report_plots_say_what_varies(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from semisup.tools import plots
    for seed in range(2):
        fake_run(tmp_path / f"ce{seed}", "ce", 0.01, seed, 50.0, 40.0)
        fake_run(tmp_path / f"cgc{seed}", "cgc", 0.01, seed, 51.0, 45.0, weight=0.1)
        pd.DataFrame(dict(epoch=[2, 1], step=[20, 10], train_ce=[1.0, 2.0], train_consistency=[0.0, 0.0],
                          top1=[50.0, 40.0])).to_csv(tmp_path / f"ce{seed}" / "metrics.csv", index=False)
        pd.DataFrame(dict(epoch=[1, 2], step=[10, 20], train_ce=[2.0, 1.0], train_consistency=[3.5, 3.0],
                          top1=[41.0, 51.0])).to_csv(tmp_path / f"cgc{seed}" / "metrics.csv", index=False)
    runs = load_runs(sorted(tmp_path.iterdir()), settings=("cgc_weight", "temperature"))
    figure = plots.tradeoff_figure(runs)
    assert len(figure.axes) == 1  # one lambda: no colour bar, the lambda is in the legend
    assert any("λ 0.1" in t.get_text() for t in figure.axes[0].get_legend().get_texts())
    figure = plots.curves_figure(runs)
    consistency = figure.axes[1]
    assert consistency.get_title().startswith("training consistency loss")
    assert all(list(line.get_xdata()) == [1, 2] for ax in figure.axes for line in ax.get_lines())  # epochs in order
    labels = [line.get_label() for line in consistency.get_lines()]
    assert labels and not any(label.startswith("ce") for label in labels)  # no flat zero line for cross-entropy


def test_class_names_file_is_read_and_a_bad_line_named(tmp_path):
    from semisup.tools.report import read_class_names
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_class_names(names) == {"n01440764": "tench", "n01443537": "goldfish"}
    names.write_text("n01440764 tench\njustone\n")
    with pytest.raises(UsageError, match=r"LOC_synset_mapping.txt:2: expected '<class folder> <name>'"):
        read_class_names(names)


def test_an_evaluation_appended_after_a_cut_line_is_kept_whole(tmp_path):
    """eval.jsonl's last line cut by a kill: the next evaluation's lines start on a line of their
    own, so they are read back (glued onto the cut line, they were lost with it)."""
    from semisup.files import append_lines
    log = tmp_path / "eval.jsonl"
    log.write_text(json.dumps(dict(iauc=50.0)) + "\n" + '{"iauc": 6')  # a kill mid-write
    append_lines(log, [json.dumps(dict(iauc=61.0)), json.dumps(dict(dauc=9.0))])
    append_lines(log, [json.dumps(dict(iauc=62.0))])  # after whole lines: no empty line in between
    parsed = []
    for line in log.read_text().splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    assert parsed == [dict(iauc=50.0), None, dict(iauc=61.0), dict(dauc=9.0), dict(iauc=62.0)]


def test_an_image_of_another_size_than_its_annotation_is_counted_in_bad_val_images(tmp_path):
    """Read fine by top-1, scored as unreadable by CH (it is not the image its boxes describe):
    bad_val_images says so instead of 0."""
    bundle, cfg = mixed_size_eval(tmp_path)
    clean = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=4).run(build_model("resnet_tiny", 3), progress=False)
    bundle.val.sizes[0] = (bundle.val.sizes[0][0] + 10, bundle.val.sizes[0][1])  # the annotation's frame differs
    shifted = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=4).run(build_model("resnet_tiny", 3), progress=False)
    assert clean["bad_val_images"] == 0 and shifted["bad_val_images"] == 1
    assert "_size_mismatch" not in shifted


def test_a_cgc_loss_over_one_image_is_undefined_not_a_perfect_zero(tmp_path):
    bundle, cfg = mixed_size_eval(tmp_path)
    one = parse_config(["--ch-short-side", "64", "--image-size", "64", "--resize-size", "72", "--workers", "0",
                        "--max-eval-images", "1"])
    result = Evaluator(one, bundle, torch.device("cpu"), batch_size=4).run(build_model("resnet_tiny", 3), progress=False)
    assert result["cgc_val_loss"] is None and 0 <= result["top1"] <= 100


def test_a_checkpoint_evaluated_on_data_of_other_class_names_is_refused(tmp_path, capsys):
    """As many classes, other names (a folder renamed, another dataset): top-1 would count other
    labels; the checkpoint's record of its classes says so in one line."""
    import shutil

    from semisup.evaluate import main as evaluate
    from semisup.train.trainer import train
    from tests.imagenet_tree import make_tree
    root = tmp_path / "data"
    make_tree(root, bad=False)
    train(parse_config(["--data", str(root), "--arch", "resnet_tiny", "--image-size", "32", "--resize-size", "36",
                        "--ch-short-side", "32", "--labeled-fraction", "0.5", "--splits-dir", str(tmp_path / "splits"),
                        "--val-boxes", str(root / "boxes"), "--batch-labeled", "2", "--batch-unlabeled", "2",
                        "--group-size", "2", "--workers", "0", "--gallery", "0", "--max-steps", "1", "--pretrained",
                        "none", "--run-dir", str(tmp_path / "run")]))
    other = tmp_path / "other"
    shutil.copytree(root, other)
    (other / "train" / "n00000003").rename(other / "train" / "n00000009")
    common = ["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--metrics", "top1", "--gallery", "0",
              "--val-boxes", str(other / "boxes"), "--out", str(tmp_path / "eval")]
    assert evaluate(common + ["--data", str(root)]) == 0
    capsys.readouterr()
    (other / "val").rename(other / "val_unused")  # validation in class folders of the new names
    for image_id, wnid in ((p.stem, p.read_text().split("<name>")[1].split("<")[0]) for p in (other / "boxes").iterdir()):
        folder = other / "val" / wnid.replace("n00000003", "n00000009")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(other / "val_unused" / f"{image_id}.JPEG", folder)
    assert evaluate(common + ["--data", str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "trained on other classes than the data's (1 of 3 differ, e.g. n00000003 / n00000009" in err[-1], err[-1]

"""Benchmarks: one JSON line per result, medians over repeats, each pair run alternately in
one process so their ratio holds on a noisy machine.

    semisup-bench step   [--arch resnet18 --batch 16 --image-size 224 --device cpu --amp off]
    semisup-bench loss   [--batch 128]
    semisup-bench loader [--images 64]
    semisup-bench eval   [--images 24]
    semisup-bench gpu    [--out gpu.json]      # on a GPU node: everything in one command
    semisup-bench plan   [--gpus 1 --cores 16 --gpu h100 --decode cpu]
    semisup-bench share  [--steps 40 --repeats 2 --compare]   # two runs on one machine at once

Numbers depend on the machine: report them with the command and the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisup.config import add_setting
from semisup.data import transforms as T
from semisup.errors import Parser
from semisup.files import write_json_atomic
from semisup.method import cgc, explainers
from semisup.tools.measure import alternate, emit, machine, sample_photos, step_setup, write_photo  # noqa: F401 (machine, emit: bench's API)
from semisup.train.compiling import CompiledForward


def floor_step(trainer, labeled, unlabeled):
    """The run's step with the explanation off: the same three forwards and one backward, the
    consistency replaced by cross-entropy on the view's pseudo-labels. What a CGC step cannot cost less than."""
    return trainer.training_step(labeled, unlabeled, dataclasses.replace(trainer.settings, explain=None))


def bench_step(args):
    if args.variant:  # child process: one variant, report time and peak memory
        trainer, labeled, unlabeled = step_setup(args)
        run = trainer.training_step if args.variant == "cgc" else (lambda a, b: floor_step(trainer, a, b))
        for _ in range(2):
            run(labeled, unlabeled)
        print(json.dumps(dict(max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
        return
    trainer, labeled, unlabeled = step_setup(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    step = lambda: trainer.training_step(labeled, unlabeled)
    t_cgc, t_floor = alternate(step, lambda: floor_step(trainer, labeled, unlabeled), args.repeats, sync)
    row = dict(bench="step", arch=args.arch, batch_per_stream=args.batch, image_size=args.image_size,
               device=args.device, amp=args.amp, channels_last=args.channels_last, group_size=args.group_size,
               bn_geometry=args.bn_geometry,
               replicas_per_process=trainer.geometry.local, step_s=statistics.median(t_cgc),
               floor_s=statistics.median(t_floor))
    row["step_over_floor"] = row["step_s"] / row["floor_s"]
    row["images_per_s"] = 3 * args.batch / row["step_s"]
    if trainer.geometry.local > 1 and args.bn_geometry == "replicas":
        # What BatchNorm over the replicas costs: the same step with BatchNorm over the whole batch, alternately.
        plain, _, _ = step_setup(argparse.Namespace(**dict(vars(args), bn_geometry="batch")))
        plain.model.load_state_dict(trainer.model.state_dict())
        plain.model.train()
        t_replicas, t_plain = alternate(step, lambda: plain.training_step(labeled, unlabeled), args.repeats, sync)
        row.update(step_bn_batch_s=statistics.median(t_plain),
                   replicas_over_batch_bn=statistics.median(t_replicas) / statistics.median(t_plain))
        plain = None
    peaks = _step_peaks(args, step, lambda: floor_step(trainer, labeled, unlabeled))
    row.update(peak_mb=peaks[0], floor_peak_mb=peaks[1], memory_over_floor=peaks[0] / peaks[1])
    return emit(**row)


def _step_peaks(args, step, floor) -> list[float]:
    """Peak memory (MiB) of the step and of its floor: the GPU's allocator, or on the CPU each
    variant's max RSS in a process of its own."""
    if args.device.startswith("cuda"):
        peaks = []
        for fn in (step, floor):
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() / 2**20)
        return peaks
    peaks = []
    for variant in ("cgc", "floor"):
        command = [sys.executable, "-m", "semisup.tools.bench", "step", "--variant", variant, *args.passthrough]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks.append(json.loads(out)["max_rss_mb"])
    return peaks


def bench_loss(args):
    """Our loss (7 x 7 factors) vs the released per-sample loop on 224 x 224 maps, fwd + bwd."""
    from semisup.tools.reference import pixel_boxes_and_flips, released_cgc_loss
    g = torch.Generator().manual_seed(0)
    B, device = args.batch, torch.device(args.device)
    cam = torch.rand(B, 7, 7, generator=g).to(device).requires_grad_()
    cam_aug = torch.rand(B, 7, 7, generator=g).to(device).requires_grad_()
    pixel_boxes, boxes, flips = pixel_boxes_and_flips(B, g)
    boxes, flips = boxes.to(device), flips.to(device)
    flip_list = flips.tolist()

    def ours():
        cgc.cgc_loss(cam_aug, cam, boxes, flips, group_size=args.group).backward()

    def loop():
        released_cgc_loss(cam_aug, cam, pixel_boxes, flip_list, group_size=args.group).backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_ours, t_loop = alternate(ours, loop, args.repeats, sync)
    with torch.no_grad():
        a = cgc.cgc_loss(cam_aug, cam, boxes, flips, group_size=args.group).item()
        b = released_cgc_loss(cam_aug, cam, pixel_boxes, flip_list, group_size=args.group).item()
    return emit(
        bench="loss", batch=B, group=args.group, device=args.device, ours_s=statistics.median(t_ours),
        loop_s=statistics.median(t_loop), loop_over_ours=statistics.median(t_loop) / statistics.median(t_ours),
        loss_ours=a, loss_loop=b, relative_difference=abs(a - b) / abs(b),
    )


# ---- loader -------------------------------------------------------------------------------
# ImageNet's training JPEGs: about 500 x 375 (both orientations), quality ~90, ~110 KB, a few
# large ones. Photographic content from the two photographs scikit-learn ships, cropped,
# resized and given sensor-like noise, so file sizes and decode work match real photos.
PHOTO_SHAPES = [(500, 375), (375, 500), (500, 333), (500, 375), (500, 400), (333, 500), (500, 375), (1600, 1200)]


def make_jpegs(folder: Path, count: int, seed: int = 0, noise: float = 7.0) -> list[str]:
    """ImageNet-like photographic JPEGs (quality 90); one in eight is a large 1600 x 1200."""
    photos, rng = sample_photos(), np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = PHOTO_SHAPES[i % len(PHOTO_SHAPES)]
        path = folder / f"img{i:05d}.JPEG"
        write_photo(path, photos[i % len(photos)], w, h, rng, noise)
        paths.append(str(path))
    return paths


def plain_torchvision_samplers(paths):
    """The plain pipeline (torchvision ImageFolder style: PIL decode, transforms on PIL images,
    ToTensor + Normalize in the worker) producing the same tensors as our two streams:
    unlabeled: the view (Resize 256 + CenterCrop 224) and its RandomResizedCrop + flip;
    labeled: RandomResizedCrop 224 + flip."""
    import torchvision.transforms as TV
    from PIL import Image
    to_tensor = TV.Compose([TV.ToTensor(), TV.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    view_tf = TV.Compose([TV.Resize(256), TV.CenterCrop(224)])
    crop_tf = TV.Compose([TV.RandomResizedCrop(224), TV.RandomHorizontalFlip()])

    def load(path):
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")

    def unlabeled(path):
        view = view_tf(load(path))
        return to_tensor(view), to_tensor(crop_tf(view))

    def labeled(path):
        return to_tensor(crop_tf(load(path)))
    return unlabeled, labeled


def bench_loader(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: the number is per worker process
    try:
        return _bench_loader(args)
    finally:
        torch.set_num_threads(threads)


def _bench_loader(args):
    """Images/s of one single-threaded worker, ours vs plain torchvision, per stream; and the
    validation loaders' rates (top-1 view, CH at 448) that the planner needs."""
    from semisup.data.datasets import EvalDataset, FileSource, TrainDataset
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        kb = statistics.mean(Path(p).stat().st_size for p in paths) / 1024
        source = FileSource(paths, [0] * len(paths))
        streams = dict(unlabeled=TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=False, pair=True),
                       labeled=TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=True, pair=False))
        draft = TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=False, pair=True, draft=True)
        plain = dict(zip(("unlabeled", "labeled"), plain_torchvision_samplers(paths)))
        rows = {}
        for name, dataset in streams.items():
            def ours():
                for i in range(len(paths)):
                    dataset[(i, i)]

            def reference():
                for path in paths:
                    plain[name](path)
            t_ours, t_ref = alternate(ours, reference, args.repeats)
            rows[name] = (len(paths) / statistics.median(t_ours), len(paths) / statistics.median(t_ref))
        # --decode cpu-draft against the exact default, alternately; and how far its views are from the exact ones.
        def exact_all():
            for i in range(len(paths)):
                streams["unlabeled"][(i, i)]

        def draft_all():
            for i in range(len(paths)):
                draft[(i, i)]
        t_exact, t_draft = alternate(exact_all, draft_all, args.repeats)
        rows["draft"] = (len(paths) / statistics.median(t_draft), len(paths) / statistics.median(t_exact))
        gaps = [
            (draft[(i, i)]["view"].int() - streams["unlabeled"][(i, i)]["view"].int()).abs() for i in range(len(paths))
        ]
        changed = [g for g in gaps if g.max() > 0]
        rows["draft_pixels"] = (len(changed), max((int(g.max()) for g in gaps), default=0),
                                float(np.mean([g.float().mean().item() for g in changed])) if changed else 0.0)
        evals = dict(val=EvalDataset(source, 256, 224), ch_val=EvalDataset(source, 448, None))
        for name, dataset in evals.items():
            def load_all():
                for i in range(len(paths)):
                    dataset[i]
            rows[name] = (len(paths) / statistics.median(alternate(load_all, lambda: None, args.repeats)[0]), None)
    return emit(bench="loader", images=len(paths), mean_kb=round(kb, 1), processes=1, threads=1,
                val_per_s=rows["val"][0], ch_val_per_s=rows["ch_val"][0],
                unlabeled_per_s=rows["unlabeled"][0], unlabeled_plain_per_s=rows["unlabeled"][1],
                unlabeled_ours_over_plain=rows["unlabeled"][0] / rows["unlabeled"][1],
                labeled_per_s=rows["labeled"][0], labeled_plain_per_s=rows["labeled"][1],
                labeled_ours_over_plain=rows["labeled"][0] / rows["labeled"][1],
                unlabeled_draft_per_s=rows["draft"][0], draft_over_exact=rows["draft"][0] / rows["draft"][1],
                draft_files_changed=rows["draft_pixels"][0], draft_max_abs_pixel_difference=rows["draft_pixels"][1],
                draft_mean_abs_pixel_difference_changed_files=round(rows["draft_pixels"][2], 3))


# ---- gpu ----------------------------------------------------------------------------------
def bench_gpu(args):
    """Everything a GPU node must show, in one command (about 5 minutes on one H100):
    1 %-recipe ResNet-50 step images/s in fp32 eager, bf16 + channels_last, and with
    torch.compile; CGC step / floor in time and peak memory; nvJPEG vs CPU decode; evaluation
    throughput; and the planner's estimate of the 1 % row on this node, from these numbers."""
    from types import SimpleNamespace

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    results = dict(device=machine(), arch=args.arch, batch_per_stream=args.batch, image_size=args.image_size)
    _gpu_step_variants(args, results)
    trainer, labeled, unlabeled = _gpu_setup(args, "bf16" if cuda else "off", cuda)
    _gpu_step_over_floor(args, trainer, labeled, unlabeled, results)
    _gpu_eval_rates(args, trainer.model.eval(), labeled["image"], results)
    trainer = labeled = unlabeled = None
    _gpu_decode_rates(args, device, results)
    loader = _bench_loader(SimpleNamespace(images=args.images, repeats=2))
    _gpu_plan(results, loader, cuda)
    if args.out:
        write_json_atomic(Path(args.out), results)
    return emit(bench="gpu", **results)


def _gpu_setup(args, amp: str, channels_last: bool):
    from types import SimpleNamespace

    return step_setup(SimpleNamespace(arch=args.arch, batch=args.batch, image_size=args.image_size, device=args.device,
                                      amp=amp, channels_last=channels_last))


def _rate(args, fn) -> float:
    """Images per second of ``fn`` counted as a step's three streams of ``args.batch`` (median of repeats)."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 3 * args.batch / statistics.median(times)


def _gpu_step_variants(args, results: dict) -> None:
    """Step images/s in fp32 eager, bf16 + channels_last and (``--compile``) compiled."""
    variants = [("fp32_eager", "off", False, False), ("bf16_channels_last", "bf16", True, False)]
    if args.compile:
        variants.append(("bf16_channels_last_compile", "bf16", True, True))
    for name, amp, channels_last, compiled in variants:
        trainer = labeled = unlabeled = None
        try:
            trainer, labeled, unlabeled = _gpu_setup(args, amp, channels_last)
            trainer.forward = CompiledForward(trainer.model, lambda: trainer.model, enabled=compiled)
            started = time.perf_counter()
            results[f"step_images_per_s_{name}"] = _rate(args, lambda: trainer.training_step(labeled, unlabeled))
            results[f"seconds_{name}"] = round(time.perf_counter() - started, 1)
            if compiled and not trainer.forward.compiled:  # fell back: the rate is eager's, not a compiled one
                raise RuntimeError("torch.compile failed and the step ran eagerly (see the warning above)")
        except Exception as err:  # a failing variant (e.g. compile) must not lose the others' numbers
            results[f"step_images_per_s_{name}"] = None
            results[f"error_{name}"] = f"{type(err).__name__}: {err}"[:300]
        finally:
            trainer = labeled = unlabeled = None  # freed before the next variant is built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        emit(bench="gpu-progress", variant=name, images_per_s=results[f"step_images_per_s_{name}"])
    results["bf16_cl_over_fp32"] = _ratio(results.get("step_images_per_s_bf16_channels_last"),
                                          results.get("step_images_per_s_fp32_eager"))


def _gpu_step_over_floor(args, trainer, labeled, unlabeled, results: dict) -> None:
    """CGC step vs its floor (same forwards + backward, no explanation work), time and memory."""
    cuda = args.device.startswith("cuda")
    step = lambda: trainer.training_step(labeled, unlabeled)
    floor = lambda: floor_step(trainer, labeled, unlabeled)
    t_step, t_floor = alternate(step, floor, args.repeats, torch.cuda.synchronize if cuda else (lambda: None))
    results["step_over_floor"] = statistics.median(t_step) / statistics.median(t_floor)
    if cuda:
        peaks = _step_peaks(args, step, floor)
        results.update(peak_mb_step=peaks[0], peak_mb_floor=peaks[1], memory_over_floor=peaks[0] / peaks[1])


def _gpu_eval_rates(args, model, images: torch.Tensor, results: dict) -> None:
    """Evaluation throughput: top-1 forwards at the step's size (bf16, inference mode), CH at twice it."""
    device = images.device
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        x = T.normalize(images, channels_last=cuda)
        results["infer_images_per_s"] = _rate(args, lambda: model(x)) / 3
        size = (args.image_size * 2, args.image_size * 8 // 3)
        big = T.normalize(F.interpolate(images[: max(1, args.batch // 4)].float(), size=size).to(torch.uint8),
                          channels_last=cuda)
        classes = torch.zeros(big.shape[0], dtype=torch.long, device=device)
        ch_fn = lambda: explainers.gradcam(model, *model(big), classes)
        results["ch_images_per_s"] = _rate(args, ch_fn) / 3 * big.shape[0] / args.batch


def _gpu_decode_rates(args, device: torch.device, results: dict) -> None:
    """JPEG decode: nvJPEG on this GPU vs one CPU core (libjpeg-turbo via torchvision, and PIL)."""
    from semisup.data.gpu_decode import decode_rate

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results["cpu_decode_per_core_per_s"] = decode_rate(paths, torch.device("cpu"), batch=16, repeats=2)
        finally:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            results["nvjpeg_per_s"] = decode_rate(paths, device, batch=min(128, len(paths)), repeats=3)
            results["nvjpeg_over_cpu_core"] = results["nvjpeg_per_s"] / results["cpu_decode_per_core_per_s"]


def _gpu_plan(results: dict, loader: dict, cuda: bool) -> None:
    """The planner's estimate of the 1 % row on this node, from the numbers just measured."""
    from semisup.train import plan

    best_step = max(v for k, v in results.items() if k.startswith("step_images_per_s_") and v)
    rates = plan.Rates(step_images_per_s=best_step, infer_images_per_s=results["infer_images_per_s"],
                       ch_images_per_s=results["ch_images_per_s"], labeled_per_s=loader["labeled_per_s"],
                       unlabeled_per_s=loader["unlabeled_per_s"], val_per_s=loader["val_per_s"],
                       ch_val_per_s=loader["ch_val_per_s"], nvjpeg_images_per_s=results.get("nvjpeg_per_s"))
    for decode in ("cpu", "gpu") if cuda else ("cpu",):
        estimate = plan.plan(plan.RunShape(), rates, gpus=1, cores=os.cpu_count() or 1, decode=decode)
        print(plan.format_plan(estimate), flush=True)
        results[f"plan_1pct_hours_decode_{decode}"] = estimate["total_h"]
        results[f"plan_1pct_bound_decode_{decode}"] = estimate["bounded_by"]
    results["rates"] = {k: v for k, v in vars(rates).items()}


def _ratio(a, b):
    return a / b if a and b else None


# ---- plan ---------------------------------------------------------------------------------
def bench_plan(args):
    """Predicted wall time of a run on a described node, from measured rates (``--rates``: a
    JSON written by ``bench gpu --out``, else the measured H100 numbers of docs/performance.md), for the run as
    configured: the released 1 % run by default (compiled, as on CUDA by default), a saved config.yaml or
    YAML of settings (``--config``), run.py's flags after ``--``; its shape, cadence, decode and
    step variant (compiled or eager) come from there."""
    from semisup.errors import UsageError
    from semisup.files import read_json
    from semisup.train import plan
    if args.rates:
        try:
            rates = plan.Rates(**read_json(Path(args.rates))["rates"])
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(
                f"--rates {args.rates}: not the JSON `semisup-bench gpu --out` writes ({type(err).__name__}: {err})"
            ) from err
    else:
        rates = plan.measured_rates(args.gpu)
    cfg = planned_config(args.config, args.run_flags)
    settings = cfg.to_dict()
    if args.decode != "cpu":
        settings["decode"] = args.decode
    summary = (
        dict(labeled=args.labeled, validation=50_000, unlabeled=int(not cfg.full_supervision and cfg.forwards_pairs))
        if args.labeled
        else None
    )
    result = plan.plan_run(settings, summary, rates, gpus=args.gpus, cores=args.cores)
    print(plan.format_plan(result))
    result["insertion_deletion_auc_s"] = plan.insertion_seconds(
        plan.shape_of(settings, summary).val_images, rates, args.gpus
    )
    print(f"after the run: insertion + deletion AUC of one checkpoint (evaluate.py --metrics iauc,dauc) "
          f"{result['insertion_deletion_auc_s'] / 60:.1f}m at the GPU's top-1 rate (float32 scoring may be slower)")
    return emit(bench="plan", **{k: v for k, v in result.items() if k != "parts"}, parts=result["parts"])


def planned_config(config: str | None, run_flags: list[str]):
    """The Config a plan is for: a YAML of settings or a saved config.yaml (whose ``code`` record
    is not a setting), then run.py's flags; the data path is not needed, only the run's shape."""
    from semisup.config import _yaml_mapping, build_parser, canonical_key, make_config
    from semisup.errors import UsageError
    values = {}
    if config:
        raw = _yaml_mapping(Path(config), UsageError, "--config")
        values = {canonical_key(str(k)): v for k, v in raw.items() if canonical_key(str(k))}
    flags = vars(build_parser().parse_args(run_flags))
    flags.pop("config", None)
    recipe = flags.pop("recipe", None)
    values.update(flags)
    values["data"] = values.get("data") or "plan"
    return make_config(values, recipe)


# ---- eval ---------------------------------------------------------------------------------
def bench_eval(args):
    from semisup.config import make_config
    from semisup.data.datasets import DataBundle, EvalSet, FileSource
    from semisup.eval.evaluator import Evaluator, content_heatmap
    from semisup.models.base import build_model
    torch.manual_seed(0)
    model = build_model(args.arch, 1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        source = FileSource(paths, list(range(len(paths))))
        sizes = [source.size(i) for i in range(len(paths))]
        boxes = [np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]) for h, w in sizes]
        bundle = DataBundle(
            [str(i) for i in range(1000)], source, np.arange(len(paths)), None, None, EvalSet(source, boxes, sizes), {}
        )
        cfg = make_config(dict(data="bench", arch=args.arch, workers=0, ch_short_side=args.short_side))
        evaluator = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=args.batch)
        result = {}

        def batched():
            with torch.no_grad():
                result["batched"] = evaluator.content_heatmap(model, progress=False, released_swav=False)["ch"]

        def one_at_a_time():  # the reference protocol: each image alone, Grad-CAM by autograd
            total = 0.0
            for i in range(len(paths)):
                image = T.TF.resize(source.load(i), [args.short_side], antialias=True).unsqueeze(0)
                logits, features = model(T.normalize(image))
                cam = cgc.gradcam_pooled(logits, features, torch.tensor([i]))
                total += content_heatmap(cam, [boxes[i]], sizes[i])[0].item()
            result["single"] = 100 * total / len(paths)

        t_batched, t_single = alternate(batched, one_at_a_time, args.repeats)
        # Insertion + deletion AUC as released (train-mode saliency pass, 2 x 29 scored images each at 224).
        from semisup.eval.insertion import InsertionDataset, InsertionSettings, insertion_metrics
        settings = InsertionSettings(size=args.image_size, batch=max(1, args.batch) * 8)
        loader = torch.utils.data.DataLoader(
            InsertionDataset(source, range(len(paths)), args.image_size), batch_size=100
        )
        started = time.perf_counter()
        auc = insertion_metrics(model, loader, settings, torch.device(args.device if args.device else "cpu"))
        insertion_s = time.perf_counter() - started
    n, batched, single = len(paths), statistics.median(t_batched), statistics.median(t_single)
    return emit(bench="eval", arch=args.arch, images=n, short_side=args.short_side, batch=args.batch,
                batched_per_s=n / batched, single_per_s=n / single, batched_over_single=single / batched,
                ch_batched=result["batched"], ch_single=result["single"],
                ch_abs_difference=abs(result["batched"] - result["single"]), insertion_image_size=args.image_size,
                insertion_scored_images_per_image=2 * (len(auc["insertion_curve"])),
                insertion_seconds_per_1000_images=1000 * insertion_s / n, iauc=auc["iauc"], dauc=auc["dauc"])


# Smallest value of each numeric option (every one also finite).
_MINIMUM = dict(
    batch=1, image_size=16, repeats=1, images=1, short_side=16, group=2, group_size=1, gpus=1, cores=1, labeled=1
)


def check_args(args) -> None:
    """One line naming the option for a value no benchmark can run with."""
    from semisup.errors import UsageError
    for key, low in _MINIMUM.items():
        value = getattr(args, key, None)
        if value is not None and value < low:
            raise UsageError(f"--{key.replace('_', '-')}: must be >= {low}, got {value}")
    from semisup.config import _RANGES  # the run's own ranges for the settings a benchmark shares with it
    for key in ("image_size", "group_size"):
        value, (test, what) = getattr(args, key, None), _RANGES[key]
        if value is not None and not test(value):
            raise UsageError(f"--{key.replace('_', '-')}: must be {what}, got {value}")
    if args.what != "plan":  # the benchmarks that run here need the device here
        from semisup.config import ConfigError, check_device
        try:
            check_device(args.device)
        except ConfigError as err:
            raise UsageError(str(err).replace("--device / device", "--device")) from None
    if args.rates and not Path(args.rates).is_file():
        raise UsageError(f"--rates {args.rates}: no such file (write one with `semisup-bench gpu --out FILE`)")


def build_parser() -> Parser:
    """The command's options (the generated tests read their types from here)."""
    parser = Parser(prog="semisup-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step", "loss", "loader", "eval", "gpu", "plan", "e2e", "share", "gpu-check",
                                         "tree"],
                        help="e2e: a short real run beside the planner's prediction (its options: e2e --help); "
                             "share: a run alone, then two at once (share --help); gpu-check: the CUDA paths "
                             "checked, PASS/FAIL per section (gpu-check --help); tree: a dry run, the first step "
                             "and loader workers' memory on a tree of ImageNet's size (tree --help)")
    # The settings a run has too take the run's flags (spellings, types, choices), with bench's defaults.
    add_setting(parser, "arch", default="resnet18", help="architecture (default resnet18; gpu: resnet50)")
    parser.add_argument("--batch", type=int, help="per stream (step), heatmaps (loss), images per batch (eval)")
    add_setting(parser, "image_size", default=224, help="crop size (default 224)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_setting(parser, "amp", default="off", help="step: autocast dtype (default off)")
    add_setting(parser, "channels_last", default=False, help="step: channels_last memory format on GPUs (default off)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--group", type=int, default=64, help="loss: InfoNCE group size (the released 64)")
    add_setting(parser, "group_size", default=64, help="step: images per released replica (--batch / this = replicas "
                                                      "per process; 2 also times BatchNorm over the whole batch)")
    add_setting(parser, "bn_geometry", default="replicas", help="step: BatchNorm statistics (default replicas)")
    parser.add_argument("--variant", choices=["cgc", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                        help="gpu: also time the step under torch.compile (default on a GPU)")
    parser.add_argument("--out", help="gpu: also write the results (and the planner's rates) to this JSON file")
    parser.add_argument("--gpus", type=int, default=1, help="plan: GPUs of the node")
    parser.add_argument(
        "--gpu", default="h100", help="plan: GPU kind whose measured rates to use (see semisup/train/plan.py)"
    )
    parser.add_argument("--cores", type=int, default=16, help="plan: CPU cores of the node")
    add_setting(parser, "decode", default="cpu", help="plan: where JPEGs are decoded (default cpu)")
    parser.add_argument("--rates", help="plan: JSON written by `bench gpu --out` (rates measured on the target node)")
    parser.add_argument(
        "--config",
        help=(
            "plan: a run's YAML settings or saved config.yaml (default: the released 1 %% run); "
            "run.py flags after -- too"
        ),
    )
    parser.add_argument("--labeled", type=int, help="plan: labeled images (default 12,811)")
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["e2e"]:  # its own options (semisup-bench e2e --help)
        from semisup.tools import e2e
        return e2e.main(argv[1:])
    if argv[:1] == ["share"]:  # its own options (semisup-bench share --help)
        from semisup.tools import share
        return share.main(argv[1:])
    if argv[:1] == ["gpu-check"]:  # its own options (semisup-bench gpu-check --help)
        from semisup.tools import gpucheck
        return gpucheck.main(argv[1:])
    if argv[:1] == ["tree"]:  # its own options (semisup-bench tree --help)
        from semisup.tools import tree
        return tree.main(argv[1:])
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.run_flags = run_flags
    check_args(args)
    argv = sys.argv[1:] if argv is None else argv
    args.passthrough = [a for a in argv[1:]]
    defaults = dict(step=16, loss=128, loader=None, eval=16, gpu=128, plan=None)
    args.batch = args.batch or defaults[args.what]
    if args.what == "gpu" and "--arch" not in argv:
        args.arch = "resnet50"
    benches = dict(
        step=bench_step, loss=bench_loss, loader=bench_loader, eval=bench_eval, gpu=bench_gpu, plan=bench_plan
    )
    return benches[args.what](args)


def console(argv: list[str] | None = None) -> int:
    """The ``semisup-bench`` command: one line on stderr for a mistake, exit status 0 after a run."""
    from semisup.errors import cli
    checks = (sys.argv[1:] if argv is None else argv)[:1] == ["gpu-check"]
    return cli(lambda args: main(args) if checks else (main(args) and 0))(argv)  # gpu-check: 1 when a section fails


if __name__ == "__main__":
    sys.exit(console())

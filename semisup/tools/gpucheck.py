"""``semisup-bench gpu-check``: the CUDA paths checked in one call, first wherever a GPU is at hand.

    semisup-bench gpu-check [--dry-run] [--only SECTION ...] [--out FILE] [--budget-s 540]

Each section prints PASS, FAIL or SKIP with its numbers and survives a failing one; the whole
output goes to ``results/perf/gpu_check_<device>.txt`` (rewritten after every section, so a
timeout keeps what was done). On one H100 it takes at most 9 minutes; ``--dry-run`` runs every
section's CPU form (tiny models, torch's CPU decoder, gloo on the CPU, ``aot_eager`` for
Inductor) in under a minute, and is in the test suite so the check cannot rot.

Sections (what each shows; docs/performance.md says how to read them):
  rng-resume     a checkpoint written with 8 GPUs visible resumes here, each visible GPU its own state
  nvjpeg-race    freed blocks still read by queued kernels, then a decode: corrupted reads counted for
                 torchvision's decode on the current stream (control) and for the side-stream decode
  jpeg-kinds     grey, progressive and truncated JPEGs through ``--decode gpu`` against the CPU path
  default-step   ResNet-50, batch 128, replica BatchNorm x2, bf16, channels_last: Inductor vs eager over
                 4 steps and a partial batch of 11 (fallback, graphs, loss agreement, peak memory, host syncs)
  cgc-bf16       the CGC term's gradients under bf16 autocast against float32, on ResNet-50
  two-process    two processes on one GPU over gloo: SyncBatchNorm + DDP + compile, equal weights after
  pytest-gpu     ``pytest tests/test_gpu.py``
"""
from __future__ import annotations

import argparse
import copy
import io
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from semisup.config import PROJECT_ROOT
from semisup.errors import Parser
from semisup.files import write_text_atomic
from semisup.tools.measure import machine

SECTIONS = ("rng-resume", "nvjpeg-race", "jpeg-kinds", "default-step", "cgc-bf16", "two-process", "pytest-gpu")


class Skip(Exception):
    """A section that cannot run here (said, not failed)."""


class Check:
    """The sizes and device of one check: the real ones on a GPU, the CPU form with ``--dry-run``."""

    def __init__(self, dry_run: bool):
        self.dry = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.arch, self.batch, self.size = ("resnet_tiny", 16, 32) if dry_run else ("resnet50", 128, 224)
        self.group = 8 if dry_run else 64
        self.amp = "off" if dry_run else "bf16"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def rng_resume(c: Check) -> tuple[bool, str]:
    """The saved states of 8 GPUs restored where fewer (or none) are visible."""
    from semisup import checkpoint as ckpt
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    states = [torch.cuda.get_rng_state(0) if visible else torch.zeros(16, dtype=torch.uint8)] * 8
    if visible:
        torch.cuda.manual_seed_all(123)
        states = [torch.cuda.get_rng_state(i % visible) for i in range(8)]
        torch.cuda.manual_seed_all(7)
    ckpt.set_rng_state(dict(torch=torch.get_rng_state(), cuda=states))
    restored = all(torch.equal(torch.cuda.get_rng_state(i), states[i]) for i in range(min(visible, 8)))
    return restored, f"8 saved GPU states restored on {visible} visible GPU(s)"


def _jpeg_bytes(height: int, width: int, seed: int, **save) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)  # smooth: a photo's spectrum
    picture = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    if save.pop("grey", False):
        picture = picture.convert("L")
    out = io.BytesIO()
    picture.save(out, "JPEG", **save)
    return out.getvalue()


def _race(c: Check, decode, iterations: int) -> int:
    """Corrupted reads: tensors of known values are reduced by kernels queued behind a long one,
    freed while queued, then a decode allocates (and may be handed those blocks)."""
    from torchvision.io import ImageReadMode
    h, w, count, numel = (32, 48, 4, 3 * 32 * 48 // 4) if c.dry else (1024, 1364, 16, 3 * 1024 * 1364 // 4)
    data = [torch.frombuffer(bytearray(_jpeg_bytes(h, w, i)), dtype=torch.uint8) for i in range(count)]
    corrupted = 0
    for _ in range(iterations):
        tensors = [torch.full((numel,), float(k), device=c.device) for k in range(count)]
        c.sync()
        if c.device.type == "cuda":
            torch.cuda._sleep(20_000_000)  # queued work the reductions wait behind
        sums = [t.sum() for t in tensors]
        del tensors  # freed while their reductions are still queued
        decode(data, ImageReadMode.RGB)
        c.sync()
        corrupted += sum(int(s.item() != k * numel) for k, s in enumerate(sums))
    return corrupted


def nvjpeg_race(c: Check) -> tuple[bool, str]:
    from torchvision.io import decode_jpeg

    from semisup.data import gpu_decode
    iterations = 3 if c.dry else 40
    control = _race(c, lambda data, mode: decode_jpeg(data, mode=mode, device=c.device), iterations)
    ours = _race(c, lambda data, mode: gpu_decode._decode_jpegs(data, c.device, decode_jpeg, mode), iterations)
    shown = ("the race shown" if control else "no race on the CPU: the harness ran" if c.dry
             else "the harness did not show the race on this GPU: inconclusive")
    return ours == 0, f"corrupted reads: current-stream decode {control}, side-stream decode {ours} ({shown})"


def jpeg_kinds(c: Check, folder: Path) -> tuple[bool, str]:
    """Grey and progressive JPEGs decode as the CPU path does; a truncated one is replaced and counted."""
    from semisup.data.datasets import FileSource, TrainDataset
    from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
    kinds = {"baseline": {}, "grey": dict(grey=True), "progressive": dict(progressive=True), "truncated": {}}
    paths = []
    for n, (kind, save) in enumerate(kinds.items()):
        data = _jpeg_bytes(96, 128, n, **save)
        path = folder / f"n0_{kind}.JPEG"
        path.write_bytes(data[: int(len(data) * 0.6)] if kind == "truncated" else data)
        paths.append(str(path))
    source, size = FileSource(paths, list(range(len(paths)))), 64
    keys = [(i, 5 + i) for i in range(len(paths))]
    encoded = EncodedTrainDataset(source, np.arange(len(paths)), size, 72, 0.5, crop=True, pair=True)
    batch = decode_and_transform(collate_encoded([encoded[k] for k in keys]), c.device, size, 72)
    cpu = TrainDataset(source, np.arange(len(paths)), size, 72, 0.5, crop=True, pair=True)
    diffs = {kind: (batch["image"][i].cpu().float() - cpu[keys[i]]["image"].float()).abs().mean().item()
             for i, kind in enumerate(kinds) if kind != "truncated"}
    replaced = batch["bad"].tolist() == [0, 0, 0, 1] and batch["label"].tolist()[3] == 0  # the next readable: file 0
    ok = replaced and all(d < 3.0 for d in diffs.values())
    shown = ", ".join(f"{k} {v:.2f}" for k, v in diffs.items())
    return ok, f"mean |GPU - CPU| of 255: {shown}; truncated replaced and counted: {replaced}"


def _steps(c: Check, compiled: bool, state: dict | None):
    """Losses of 4 steps and a partial batch of 11 (the same batches for every variant)."""
    from types import SimpleNamespace

    from semisup.tools.measure import step_setup
    from semisup.train.compiling import CompiledForward
    trainer, labeled, unlabeled = step_setup(SimpleNamespace(
        arch=c.arch, batch=c.batch, image_size=c.size, device=str(c.device), amp=c.amp, channels_last=not c.dry,
        group_size=c.group, bn_geometry="replicas"))
    if state is not None:
        trainer.model.load_state_dict(state)
    for group in trainer.optimizer.param_groups:  # random images: a small rate keeps 5 steps from diverging
        group["lr"] = 1e-3
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.forward = CompiledForward(trainer.model, lambda: trainer.model, enabled=compiled)
    partial = ({k: v[:11] for k, v in labeled.items()}, {k: v[:11] for k, v in unlabeled.items()})
    losses, syncs = [], []
    if c.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for n, batches in enumerate([(labeled, unlabeled)] * 4 + [partial]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if c.device.type == "cuda" and n == 3:  # a warm, full-size step: its synchronising calls
                torch.cuda.set_sync_debug_mode("warn")
            try:
                losses.append(float(trainer.training_step(*batches).loss))
            finally:
                if c.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        syncs += [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if c.device.type == "cuda" else float("nan")
    return losses, trainer.forward, peak, syncs, start


def default_step(c: Check) -> tuple[bool, str]:
    import functools
    if c.dry:  # Inductor's code generation takes minutes on 2 cores: its trace and AOT autograd only
        compile_fn = torch.compile
        torch.compile = functools.partial(compile_fn, backend="aot_eager")
    try:
        compiled, forward, peak, syncs, start = _steps(c, True, None)
        eager, _, _, _, _ = _steps(c, False, start)
    finally:
        if c.dry:
            torch.compile = compile_fn
    gap = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(compiled, eager))
    tolerance = 1e-4 if c.amp == "off" else 5e-2
    ok = forward.compiled and gap < tolerance and all(np.isfinite(compiled))
    sites = ", ".join(sorted(set(syncs))) or "none"
    return ok, (f"compiled (no fallback): {forward.compiled}; graphs for {len(forward.shapes)} batch shapes; "
                f"losses compiled {[round(x, 4) for x in compiled]} eager {[round(x, 4) for x in eager]} "
                f"(largest relative gap {gap:.2e}, tolerance {tolerance:g}); peak {peak:.1f} GiB; host syncs in "
                f"a warm step: {len(syncs)} ({sites})")


def cgc_bf16(c: Check) -> tuple[bool, str]:
    """Gradients of the CGC term alone: bf16 autocast against float32, from the same weights."""
    from semisup.data import transforms as T
    from semisup.method import cgc, explainers
    from semisup.models.base import build_model
    torch.manual_seed(0)
    model = build_model(c.arch, 10 if c.dry else 1000).to(c.device).train()
    batch = 8 if c.dry else 32
    view = torch.randint(0, 256, (batch, 3, c.size, c.size), dtype=torch.uint8, device=c.device)
    aug = view.flip(-1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * batch, device=c.device)
    flips = torch.ones(batch, dtype=torch.bool, device=c.device)
    grads = {}
    for dtype in (None, torch.bfloat16):
        m = copy.deepcopy(model)
        with torch.autocast(c.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, features = m(T.normalize(view))
            logits_aug, features_aug = m(T.normalize(aug))
            classes = logits.detach().argmax(1)
            explain = explainers.get("gradcam")
            cam = explain(explainers.ExplainRequest(m, view, logits, features, classes))
            cam_aug = explain(explainers.ExplainRequest(m, aug, logits_aug, features_aug, classes))
        loss = cgc.cgc_loss(cam_aug, cam, boxes, flips, size=c.size, group_size=batch)
        loss.backward()
        grads[dtype] = torch.cat([p.grad.flatten().float() for p in m.parameters() if p.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads[None], grads[torch.bfloat16], 0).item()
    ratio = (grads[torch.bfloat16].norm() / grads[None].norm()).item()
    detail = f"gradient cosine bf16 vs fp32 {cosine:.4f}, norm ratio {ratio:.4f}"
    if c.dry:  # a 2 x 2 heatmap of a tiny model on the CPU measures nothing of bf16: the code runs, finite
        return bool(np.isfinite([cosine, ratio]).all()), detail + " (CPU form: the numbers are not judged)"
    return cosine > 0.98 and 0.9 < ratio < 1.1, detail + " (pass: cosine > 0.98, ratio within 10 %)"


def _two_process_worker(rank: int, world: int, port: int, dry: bool, out: str) -> None:
    import os

    import torch.distributed as dist

    from semisup.models.base import build_model
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    device = torch.device("cpu" if dry else "cuda:0")  # both processes on one GPU
    model = build_model("resnet_tiny" if dry else "resnet18", 10).to(device)
    if not dry:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if dry else [0])
    step = torch.compile(ddp, backend="aot_eager" if dry else "inductor")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(rank)
    for _ in range(2):
        logits, _ = step(torch.randn(8, 3, 32, 32, device=device))
        logits.logsumexp(1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    flat = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    dist.destroy_process_group()
    if rank == 0:
        write_text_atomic(Path(out), str(float((gathered[0] - gathered[1]).abs().max())))  # the parent reads it


def two_process(c: Check, folder: Path) -> tuple[bool, str]:
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = folder / "two_process.txt"
    mp.spawn(_two_process_worker, args=(2, port, c.dry, str(out)), nprocs=2, join=True)
    gap = float(out.read_text())
    what = "BatchNorm + DDP + aot_eager on the CPU" if c.dry else "SyncBatchNorm + DDP + Inductor on one GPU"
    return gap == 0.0, f"{what}: largest weight difference between the processes {gap:g}"


def pytest_gpu(c: Check, budget_s: float) -> tuple[bool, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    if c.dry:
        command.append("--collect-only")
    if budget_s < 30:
        raise Skip(f"{budget_s:.0f} s of the budget left")
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=budget_s)
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode == 0, tail


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        from semisup.errors import UsageError
        raise UsageError("gpu-check needs a CUDA GPU (this machine has none); --dry-run runs every section's CPU form")
    c = Check(args.dry_run)
    out = Path(args.out or PROJECT_ROOT / "results" / "perf" /
               f"gpu_check_{'dry_run' if c.dry else machine().replace(' ', '_').lower()}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    torchvision = __import__("torchvision").__version__
    lines = [f"semisup-bench gpu-check{' --dry-run' if c.dry else ''} on {machine()} (torch {torch.__version__}, "
             f"torchvision {torchvision}), {time.strftime('%Y-%m-%d %H:%M')}"]
    print(lines[0], flush=True)
    started, failed = time.perf_counter(), 0
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        sections = {
            "rng-resume": lambda: rng_resume(c), "nvjpeg-race": lambda: nvjpeg_race(c),
            "jpeg-kinds": lambda: jpeg_kinds(c, Path(tmp)), "default-step": lambda: default_step(c),
            "cgc-bf16": lambda: cgc_bf16(c), "two-process": lambda: two_process(c, Path(tmp)),
            "pytest-gpu": lambda: pytest_gpu(c, args.budget_s - (time.perf_counter() - started)),
        }
        for name in args.only or SECTIONS:
            begun = time.perf_counter()
            try:
                ok, detail = sections[name]()
                verdict = "PASS" if ok else "FAIL"
            except Skip as why:
                verdict, detail = "SKIP", str(why)
            except Exception as err:  # a failing section must not lose the others' numbers
                verdict = "FAIL"
                detail = f"{type(err).__name__}: {str(err).strip()[:300]}\n{traceback.format_exc(limit=-3)}"
            failed += verdict == "FAIL"
            line = f"{verdict} {name} ({time.perf_counter() - begun:.1f} s): {detail}"
            print(line, flush=True)
            lines.append(line)
            write_text_atomic(out, "\n".join(lines) + "\n")  # what was done survives a timeout
    summary = f"{len(lines) - 1 - failed} of {len(lines) - 1} sections passed or skipped in " \
              f"{time.perf_counter() - started:.0f} s; written to {out}"
    print(summary, flush=True)
    write_text_atomic(out, "\n".join(lines + [summary]) + "\n")
    return 1 if failed else 0


def build_parser() -> Parser:
    parser = Parser(prog="semisup-bench gpu-check", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section's CPU form (under a minute)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="these sections only")
    parser.add_argument("--out", help="the output file (default results/perf/gpu_check_<device>.txt)")
    parser.add_argument("--budget-s", type=float, default=540, help="seconds the whole check may take (pytest-gpu "
                                                                    "gets what is left; default 540)")
    return parser

"""torch.compile of the training forwards: the default per device, the fallback to eager, and
compiled runs under DDP and after a resume giving the eager run's weights.

Inductor's code generation takes minutes per graph on 2 cores, so the compiled runs here use
Dynamo's ``aot_eager`` backend: Dynamo's trace of the (DDP) module with its graph split at the
gradient buckets and AOT autograd's forward and backward graphs, without generated kernels.
tests/test_gpu.py runs the default (Inductor) compile on a GPU.
"""
import functools
import os

import pytest
import torch

from semisup.config import compiles, parse_config
from semisup.train.trainer import run_training
from tests.dist_utils import _compiled_train_worker, _train_worker, compile_backend, spawn

# 72 labeled images at 16 a step: 5 steps an epoch, the last partial (8): two batch shapes.
SHORT = ["--labeled-fraction", "0.005", "--epochs", "3", "--max-steps", "6", "--batch-labeled", "16",
         "--batch-unlabeled", "16", "--max-eval-images", "32", "--gallery", "0", "--workers", "0", "--checkpoint-every", "3", "--device", "cpu"]


def with_backend(monkeypatch, backend) -> None:
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


def run(tmp_path, name, demo_cache, *flags):
    result, trainer = run_training(parse_config(SHORT + ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / name),
                                                         *flags]))
    return result, trainer


@pytest.mark.slow
def test_compile_is_the_default_on_cuda_only(tmp_path, demo_cache):
    assert parse_config([]).compile is None
    assert compiles(None, "cuda") and not compiles(None, "cpu")
    assert compiles(True, "cpu") and not compiles(False, "cuda")
    run(tmp_path, "cpu", demo_cache, "--max-steps", "1")
    assert "torch.compile off" in (tmp_path / "cpu" / "train.log").read_text()


@pytest.mark.parametrize("backend,amp", [("failing", "off"), ("failing", "fp16"), ("failing-backward", "off")])
@pytest.mark.slow
def test_a_step_that_cannot_compile_runs_again_eagerly_and_the_run_equals_the_eager_run(tmp_path, demo_cache,
                                                                                        monkeypatch, backend, amp):
    """fp16: the GradScaler's step, where a GPU lacks bf16. failing-backward: the forward ran and
    moved BatchNorm's statistics before the backward failed; without restoring them the weights
    differ."""
    steps = "6" if amp == "off" else "2"  # float16 on a CPU is slow
    eager, _ = run(tmp_path, "eager", demo_cache, "--no-compile", "--amp", amp, "--max-steps", steps)
    with_backend(monkeypatch, compile_backend(backend))
    fallback, trainer = run(tmp_path, "fallback", demo_cache, "--compile", "--amp", amp, "--max-steps", steps)
    # Bit for bit: the failed step's BatchNorm statistics and gradients were undone before it ran again.
    assert fallback["weights_sha256"] == eager["weights_sha256"]
    assert fallback["final"]["top1"] == eager["final"]["top1"] and not trainer.forward.compiled
    log = (tmp_path / "fallback" / "train.log").read_text()
    warnings = [line for line in log.splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1, warnings  # said once, not at every step
    assert "(test backend)" in warnings[0] and "--no-compile" in warnings[0]


def test_a_real_error_of_the_first_step_is_raised_as_the_eager_step_raises_it(tmp_path, demo_cache, monkeypatch):
    """The fallback retries eagerly; an error that is not the compiler's comes back from the eager
    step, without a compile warning."""
    from semisup.train import trainer as trainer_module
    with_backend(monkeypatch, "aot_eager")
    monkeypatch.setattr(trainer_module, "cgc_step", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug in the step")))
    with pytest.raises(ValueError, match="a bug in the step"):
        run(tmp_path, "bug", demo_cache, "--compile", "--max-steps", "1")
    assert "torch.compile failed" not in (tmp_path / "bug" / "train.log").read_text()


@pytest.mark.slow
def test_a_compiled_run_resumes_to_the_eager_runs_weights(tmp_path, demo_cache, monkeypatch):
    straight, _ = run(tmp_path, "straight", demo_cache, "--no-compile")
    with_backend(monkeypatch, "aot_eager")
    compiled, trainer = run(tmp_path, "compiled", demo_cache, "--compile")
    assert trainer.forward.compiled and len(trainer.forward.shapes) == 2  # the full and the partial batch
    assert compiled["weights_sha256"] == straight["weights_sha256"]
    # As if killed after its previous checkpoint: the resumed compiled run ends where the straight one did.
    run_dir = tmp_path / "compiled"
    os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")
    (run_dir / "final.json").unlink()
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 0 < saved["step"] < 6 and not any(k.startswith(("_orig_mod.", "module.")) for k in saved["model"])
    resumed, _ = run(tmp_path, "compiled", demo_cache, "--compile")
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert resumed["weights_sha256"] == straight["weights_sha256"]


@pytest.mark.slow
def test_a_compiled_ddp_run_equals_the_eager_ddp_run(tmp_path, demo_cache):
    args = SHORT + ["--demo-cache", demo_cache, "--max-steps", "4"]
    for name in ("eager", "compiled", "fallback"):
        (tmp_path / name).mkdir()
    spawn(_train_worker, args + ["--run-dir", str(tmp_path / "eager" / "run"), "--no-compile"], str(tmp_path / "eager"))
    for name, backend in (("compiled", "aot_eager"), ("fallback", "failing-backward")):
        spawn(_compiled_train_worker, args + ["--run-dir", str(tmp_path / name / "run"), "--compile"],
              str(tmp_path / name), backend)
    results = {name: [torch.load(tmp_path / name / f"rank{r}.pt", weights_only=False) for r in range(2)]
               for name in ("eager", "compiled", "fallback")}
    digests = {name: {r["result"]["weights_sha256"] for r in ranks} for name, ranks in results.items()}
    assert digests["compiled"] == digests["eager"] == digests["fallback"] and len(digests["eager"]) == 1
    assert "torch.compile failed" in (tmp_path / "fallback" / "run" / "train.log").read_text()

"""Each benchmark runs once at a tiny size (nothing about time is asserted: benchmarks report)."""
import pytest

from semisup.tools import bench


@pytest.mark.parametrize("argv", [
    ["step", "--arch", "resnet_tiny", "--batch", "2", "--image-size", "64", "--repeats", "1"],
    ["loss", "--batch", "8", "--repeats", "1"],
    ["loader", "--images", "4", "--repeats", "1"],
    ["eval", "--arch", "resnet_tiny", "--images", "4", "--batch", "2", "--short-side", "64", "--image-size", "48", "--repeats", "1"],
    ["gpu", "--device", "cpu", "--arch", "resnet_tiny", "--batch", "2", "--image-size", "64", "--repeats", "1", "--images", "4",
     "--no-compile"],
])
@pytest.mark.slow
def test_benchmark_runs_and_reports(argv, capsys):
    row = bench.main(argv)
    assert row["bench"] == argv[0] and row["machine"]
    if argv[0] == "loss":
        assert row["relative_difference"] < 1e-3
    if argv[0] == "eval":
        assert row["ch_abs_difference"] < 1e-4  # percent: 1e-6 as a fraction
        assert row["insertion_scored_images_per_image"] == 2 * 7 and 0 <= row["iauc"] <= 100  # 48 px: 6 steps of 8 rows
    if argv[0] == "step":
        assert row["step_s"] > 0 and row["floor_s"] > 0 and row["peak_mb"] > 0
    if argv[0] == "loader":
        assert row["unlabeled_per_s"] > 0 and row["labeled_plain_per_s"] > 0 and row["ch_val_per_s"] > 0
    if argv[0] == "gpu":
        assert row["step_images_per_s_fp32_eager"] > 0 and row["step_over_floor"] > 0 and row["plan_1pct_hours_decode_cpu"] > 0


def test_planner_scales_with_the_node_and_names_the_bound(tmp_path, capsys):
    from semisup.train import plan
    rates = plan.Rates(step_images_per_s=1000, infer_images_per_s=5000, ch_images_per_s=800, labeled_per_s=150,
                       unlabeled_per_s=120, val_per_s=300, ch_val_per_s=150, nvjpeg_images_per_s=4000)
    shape = plan.RunShape(workers=8)  # the recipe's 8 workers per stream and process
    one, eight = plan.plan(shape, rates, gpus=1, cores=16), plan.plan(shape, rates, gpus=8, cores=96)
    assert eight["parts"]["train"]["gpu_s"] == pytest.approx(one["parts"]["train"]["gpu_s"] / 8)
    # 5,050 steps x 384 images at 1000 images/s: 32 minutes of GPU work.
    assert one["parts"]["train"]["gpu_s"] == pytest.approx(50 * 101 * 384 / 1000)
    starved = plan.plan(shape, rates, gpus=1, cores=2)
    assert starved["parts"]["train"]["bound"] == "decode" and starved["total_s"] > one["total_s"]
    assert plan.plan(shape, rates, gpus=1, cores=2, decode="gpu")["parts"]["train"]["bound"] == "GPU"
    # The CLI reads rates measured by `bench gpu --out`.
    (tmp_path / "rates.json").write_text(__import__("json").dumps(dict(rates=vars(rates))))
    row = bench.main(["plan", "--rates", str(tmp_path / "rates.json"), "--gpus", "8", "--cores", "96"])
    assert row["total_s"] == pytest.approx(eight["total_s"]) and "longest part" in capsys.readouterr().out


def test_planner_reads_the_run_variant_and_cadence(capsys):
    from semisup.config import make_config
    from semisup.train import plan
    rates = plan.measured_rates("h100")
    default = make_config(dict(data="x")).to_dict()
    eager = plan.plan_run(dict(default, compile=False), None, rates, gpus=1, cores=16)
    compiled = plan.plan_run(dict(default, compile=True), None, rates, gpus=1, cores=16)
    # --no-compile takes the eager rate, --compile the compiled one; unset (the default), the
    # trainer compiles on CUDA, so a GPU plan does too, and a CPU one (bench e2e) does not.
    assert eager["parts"]["train"]["gpu_s"] / compiled["parts"]["train"]["gpu_s"] == pytest.approx(4653 / 3605)
    assert default["compile"] is None
    assert plan.plan_run(default, None, rates, gpus=1, cores=16)["parts"] == compiled["parts"]
    assert plan.plan_run(default, None, rates, gpus=1, cores=16, device="cpu")["parts"] == eager["parts"]
    sparse = plan.plan_run(dict(default, eval_every=5, ch_every=10), None, rates, gpus=1, cores=16)
    assert sparse["run"]["full_evals"] == 2 + 4 and sparse["parts"]["per-epoch top-1"]["seconds"] < eager["parts"]["per-epoch top-1"]["seconds"]
    row = bench.main(["plan", "--", "--no-compile", "--eval-every", "5"])
    assert row["run"]["eval_every"] == 5 and row["total_s"] < eager["total_s"]


def test_planner_counts_each_evaluation_once_and_the_gallery_and_serial_decode():
    from semisup.train import plan
    rates = plan.Rates(step_images_per_s=1000, infer_images_per_s=5000, ch_images_per_s=800, labeled_per_s=150,
                       unlabeled_per_s=120, val_per_s=300, ch_val_per_s=150, gallery_grid_s=0.5, gallery_png_s=2.0)
    # 4 epochs of 10 steps: top-1 alone at epochs 1-3, the full evaluation at 4 (it includes top-1),
    # and the best checkpoint's; with --ch-every 2 epoch 2 is full too.
    shape = plan.RunShape(labeled=100, batch_labeled=10, batch_unlabeled=10, epochs=4, val_images=100, gallery=0)
    assert (shape.quick_evals, shape.full_evals) == (3, 2)
    sparse = plan.RunShape(**{**vars(shape), "ch_every": 2})
    assert (sparse.quick_evals, sparse.full_evals) == (2, 3)
    assert plan.RunShape(**{**vars(shape), "max_steps": 15}).full_epochs() == {2}  # stopped in epoch 2
    base = plan.plan(shape, rates, cores=4)
    quick = base["parts"]["per-epoch top-1"]
    assert quick["gpu_s"] == pytest.approx(3 * 100 / 5000) and quick["decode_s"] == pytest.approx(3 * 100 / 300 / 3)
    # The gallery: a grid at each of the current model's 4 evaluations, the PNG once.
    drawn = plan.plan(plan.RunShape(**{**vars(shape), "gallery": 16}), rates, cores=4)
    assert drawn["total_s"] - base["total_s"] == pytest.approx(4 * 0.5 + 2.0) and not drawn["not_counted"]
    assert plan.plan(plan.RunShape(**{**vars(shape), "gallery": 16}), plan.Rates(**{**vars(rates), "gallery_png_s": None}),
                     cores=4)["not_counted"]
    # --workers 0: the step's process decodes, then computes; with workers they overlap.
    serial = plan.plan(plan.RunShape(**{**vars(shape), "workers": 0}), rates, cores=4)["parts"]["train"]
    overlapped = plan.plan(plan.RunShape(**{**vars(shape), "workers": 2}), rates, cores=4)["parts"]["train"]
    assert serial["seconds"] == pytest.approx(serial["gpu_s"] + serial["decode_s"])
    assert overlapped["seconds"] == pytest.approx(max(overlapped["gpu_s"], overlapped["decode_s"]))
    assert serial["decode_s"] == pytest.approx(3 * overlapped["decode_s"])  # 1 core against min(3 free, 2 x 2 workers)


@pytest.mark.slow
def test_the_gpu_check_runs_every_sections_cpu_form_through_the_command(tmp_path):
    """`semisup-bench gpu-check --dry-run` as a user starts it: every section PASSes in its CPU
    form and the output file holds each section's line, so the check a GPU node runs first cannot rot."""
    import subprocess
    import sys

    from semisup.tools.gpucheck import SECTIONS
    out = tmp_path / "gpu_check.txt"
    done = subprocess.run([sys.executable, "-m", "semisup.tools.bench", "gpu-check", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert [line.split()[1] for line in lines[1:-1]] == list(SECTIONS)
    assert all(line.startswith("PASS ") for line in lines[1:-1]), lines
    assert "torch.compile failed" not in done.stderr  # the compiled step did not fall back to eager
    # On a machine without CUDA the real check refuses in one line and names the CPU form.
    refused = subprocess.run([sys.executable, "-m", "semisup.tools.bench", "gpu-check"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--dry-run" in refused.stderr and refused.stderr.count("\n") == 1

"""Each benchmark runs once at a tiny size (nothing about time is asserted: benchmarks report)."""
import pytest

from semisup import bench


@pytest.mark.parametrize("argv", [
    ["step", "--arch", "resnet_tiny", "--batch", "2", "--image-size", "64", "--repeats", "1"],
    ["loss", "--batch", "8", "--repeats", "1"],
    ["loader", "--images", "4", "--repeats", "1"],
    ["eval", "--arch", "resnet_tiny", "--images", "4", "--batch", "2", "--short-side", "64", "--repeats", "1"],
])
def test_benchmark_runs_and_reports(argv, capsys):
    row = bench.main(argv)
    assert row["bench"] == argv[0] and row["machine"]
    if argv[0] == "loss":
        assert row["relative_difference"] < 1e-3
    if argv[0] == "eval":
        assert row["ch_abs_difference"] < 1e-4  # percent: 1e-6 as a fraction
    if argv[0] == "step":
        assert row["step_s"] > 0 and row["floor_s"] > 0 and row["peak_mb"] > 0

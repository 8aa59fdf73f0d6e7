"""The metric registry is the one list every consumer reads: a declaration added to it (as a
plugin's would be) reaches the evaluator's names, the status table, TensorBoard's hparams, the
report's tables and the planner, with no other edit."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semisup.registry import EVALUATE_ONLY, EVERY_EVAL, FULL_EVAL, METRICS, PASSES, MetricSpec
from tests.test_evaluate import fake_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def declare(monkeypatch):
    """Declares a metric for one test (the registry is the process's: undone afterwards)."""
    METRICS.names()  # the package's own first, as in a run

    def add(spec: MetricSpec) -> MetricSpec:
        monkeypatch.setitem(METRICS._entries, spec.name, spec)
        return spec
    return add


def _rates(**extra):
    from semisup.train import plan
    return plan.Rates(step_images_per_s=1000, infer_images_per_s=5000, ch_images_per_s=800, labeled_per_s=150,
                      unlabeled_per_s=120, val_per_s=300, ch_val_per_s=150, **extra)


def test_the_package_declares_every_metric_its_consumers_used_to_list():
    from semisup.eval.evaluator import full_metrics, metric_choices, quick_metrics
    assert metric_choices() == ["top1", "ch", "cgc-loss", "knn", "iauc", "dauc", "consistency"]  # evaluate.py --metrics
    assert full_metrics() == {"top1", "ch", "cgc-loss", "knn"} and quick_metrics() == {"top1"}
    assert METRICS.headline() == ["top1", "top5", "ch"] and METRICS.hparams() == ["top1", "top5", "ch", "knn_top1"]
    assert {"ch_strict", "ch_released_swav", "ch_zero", "pointing_game"} <= set(METRICS.names())
    assert METRICS.get("pointing_game").score is not None and METRICS.get("ch").score is None
    assert not METRICS.get("dauc").higher_is_better and not METRICS.get("cgc_val_loss").higher_is_better


def test_every_declared_pass_has_a_cost_in_the_planner_and_a_typo_is_refused():
    from semisup.train import plan
    costs = plan._pass_costs(plan.RunShape(), _rates())
    assert set(costs) == set(PASSES)
    assert all(m.evaluation_pass in PASSES for m in METRICS.in_order())
    with pytest.raises(ValueError, match="pass 'insert' is not one of"):
        MetricSpec("x", "ch", "insert")
    with pytest.raises(ValueError, match="cadence 'sometimes'"):
        MetricSpec("x", "ch", "ch", cadence="sometimes")
    with pytest.raises(ValueError, match="no report table"):
        MetricSpec("x", "ch", "ch", column="X", tables=("limted",))
    with pytest.raises(ValueError, match="computed on the CH pass's heatmaps"):
        MetricSpec("x", "knn", "knn", score=lambda cams, boxes, size: cams.sum((1, 2)))


def test_the_evaluators_passes_and_names_follow_the_declarations(declare):
    from semisup.eval.evaluator import format_results, full_metrics, quick_metrics
    assert [p.name for p in METRICS.passes({"top1"})] == ["top-1"]
    assert [p.name for p in METRICS.passes({"ch", "dauc"})] == ["top-1", "ch", "insertion"]
    # CH declared at every evaluation: the quick evaluation then asks for the CH pass.
    declare(dataclasses.replace(METRICS.get("ch"), cadence=EVERY_EVAL))
    assert quick_metrics() == {"top1", "ch"}
    # A metric with a column of evaluate.py's table is printed; optional ones only where a row has them.
    declare(MetricSpec("sharpness", "ch", "ch", console="sharp", decimals=3))
    declare(MetricSpec("extra_auc", "iauc", "insertion", EVALUATE_ONLY, console="EXTRA", optional=True))
    table = format_results([dict(method="m", top1=50.0, sharpness=0.25)])
    assert "   sharp" in table.splitlines()[0] and table.splitlines()[2].endswith("   0.250")
    assert "EXTRA" not in table and "EXTRA" in format_results([dict(method="m", extra_auc=1.0)])
    assert "iauc" not in full_metrics()


def test_a_headline_metric_is_a_status_column_an_hparam_and_a_report_column(tmp_path, declare):
    from semisup.cluster.status import run_state
    from semisup.tools.report import full_supervision_table, limited_label_table, load_runs
    from semisup.train.runlog import RunLog, epoch_tag
    declare(MetricSpec("sharpness", "ch", "ch", column="Sharp", decimals=3, headline=True, tag="heatmaps/sharpness"))
    for seed, value in enumerate((0.5, 0.7)):
        fake_run(tmp_path / f"r{seed}", "cgc", 0.01, seed, 50.0, 40.0)
        final = json.loads((tmp_path / f"r{seed}" / "final.json").read_text())
        final["final"]["sharpness"] = value
        (tmp_path / f"r{seed}" / "final.json").write_text(json.dumps(final))
    # jobs/status.py: a final_* column of its own, after the package's headline ones.
    state = run_state(tmp_path / "r0")
    assert [k for k in state if k.startswith("final_")] == ["final_top1", "final_top5", "final_ch", "final_sharpness"]
    assert state["final_sharpness"] == 0.5
    # The report: its column in the limited-label table, after the package's, before the best* ones.
    table = limited_label_table(load_runs([tmp_path / "r0", tmp_path / "r1"]))
    assert list(table.columns).index("Sharp") == list(table.columns).index("Top-1 best*") - 1
    assert table.iloc[0]["Sharp"] == "0.600 ± 0.141" and table.iloc[0]["Top-1"] == "50.00 ± 0.00"
    fake_run(tmp_path / "full", "cgc", 1.0, 0, 70.0, 60.0)
    assert "Sharp" in full_supervision_table(load_runs([tmp_path / "full"])).columns  # not optional: shown as '–'
    # TensorBoard: its own tag in the epoch scalars, and in the hparams table.
    assert epoch_tag("sharpness") == "heatmaps/sharpness" and epoch_tag("top1") == "val/top1"
    logged = {}

    class Writer:
        def add_hparams(self, hparams, metrics, run_name):
            logged.update(metrics)

        def flush(self):
            pass
    runlog = RunLog(tmp_path / "r0", is_main=True)
    runlog.tensorboard = lambda write: write(Writer())
    runlog.hparams(dict(seed=0), dict(method="cgc", final=dict(top1=50.0, sharpness=0.5, ch_strict=3.0),
                                      best=dict(sharpness=0.7)))
    assert logged == {"hparam/final_top1": 50.0, "hparam/final_sharpness": 0.5, "hparam/best_sharpness": 0.7}


def test_a_metric_in_the_insertion_pass_makes_the_planner_count_that_pass(declare):
    from semisup.eval.evaluator import full_metrics
    from semisup.train import plan
    shape = plan.RunShape(labeled=100, batch_labeled=10, batch_unlabeled=10, epochs=4, val_images=100, gallery=0)
    rates = _rates()
    before = plan.plan(shape, rates, cores=4)
    assert list(before["parts"]) == ["train", "per-epoch top-1", "final CH, kNN, CGC loss"]
    # Insertion AUC declared for every full evaluation (the final and the best checkpoint's).
    declare(dataclasses.replace(METRICS.get("iauc"), cadence=FULL_EVAL))
    assert "iauc" in full_metrics()  # the evaluator computes it there, and the planner counts it
    after = plan.plan(shape, rates, cores=4)
    assert list(after["parts"]) == ["train", "per-epoch top-1", "final CH, kNN, CGC loss, insertion"]
    full_before, full_after = before["parts"]["final CH, kNN, CGC loss"], after["parts"]["final CH, kNN, CGC loss, insertion"]
    assert shape.full_evals == 2
    assert full_after["gpu_s"] - full_before["gpu_s"] == pytest.approx(2 * plan.insertion_seconds(100, rates))
    assert full_after["decode_s"] - full_before["decode_s"] == pytest.approx(2 * 100 / 300 / 3)  # 3 loader cores
    assert after["parts"]["per-epoch top-1"] == before["parts"]["per-epoch top-1"]


PLUGIN_FIRST = '''
from semisup.registry import METRICS, MetricSpec
METRICS.register("sharp", MetricSpec("sharp", "ch", "ch", column="Sharp", headline=True,
                                     score=lambda cams, boxes, size: cams.new_zeros(len(cams)).double()))
'''


def _in_fresh_python(tmp_path, code: str, **env) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (the registries are per process), tmp_path on PYTHONPATH."""
    environment = {**os.environ, "PYTHONPATH": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True)


@pytest.mark.slow
def test_the_packages_metrics_precede_a_plugins_whichever_is_imported_first(tmp_path):
    """Config validation imports --plugins before anything reads the registry: the package's own
    metrics are still registered first, so the report's columns and --metrics' names start with
    them and a plugin's come last."""
    (tmp_path / "sharp_metric.py").write_text(PLUGIN_FIRST)
    out = _in_fresh_python(tmp_path, "from semisup.registry import METRICS, load_plugins\n"
                                     "load_plugins(['sharp_metric'])\n"
                                     "print(','.join(m.name for m in METRICS.in_order()))")
    assert out.returncode == 0, out.stderr
    names = out.stdout.strip().split(",")
    assert names[:3] == ["top1", "top5", "ch"] and names[-1] == "sharp", names
    assert names.index("pointing_game") < names.index("sharp")


@pytest.mark.slow
def test_status_says_a_plugin_that_cannot_be_imported_not_a_damaged_run(tmp_path):
    """A headline-metric plugin named by SEMISUP_PLUGINS that is gone: jobs/status.py says which
    module, in one line, and never calls the finished run's final.json damaged."""
    fake_run(tmp_path / "runs" / "r0", "cgc", 0.01, 0, 50.0, 40.0)
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "status.py"), str(tmp_path / "runs")], cwd=tmp_path,
                         env={**os.environ, "SEMISUP_PLUGINS": "gone_metric_plugin"}, capture_output=True, text=True)
    assert out.returncode != 0 and "damaged" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--plugins gone_metric_plugin: cannot import it" in out.stderr

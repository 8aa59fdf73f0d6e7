"""The evaluation passes' own numbers, declared as metrics (semisup.registry.MetricSpec).

The order here is the order of the report's columns, of semisup/evaluate.py's table and of its
``--metrics`` names. The Evaluator's code computes these; a metric scored from the heatmaps of
the CH pass is declared with ``@register_heatmap_metric`` instead
(semisup/eval/heatmap_metrics.py), as a plugin's is: a declaration is computed from itself only
where it has a ``score``; a number of a new pass needs that pass in the evaluator.
"""
from __future__ import annotations

from semisup.registry import ABLATION, EVALUATE_ONLY, EVERY_EVAL, FULL_SUPERVISION, LIMITED, METRICS, MetricSpec


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to semisup.registry.METRICS under its name."""
    return METRICS.register(spec.name, spec)


ALL_TABLES = (LIMITED, FULL_SUPERVISION, ABLATION)

for _spec in (
    # Every evaluation: the forward of each validation crop (the quick --eval-every evaluation).
    MetricSpec("top1", "top1", "top-1", EVERY_EVAL, column="Top-1", tables=ALL_TABLES,
               best_in=(LIMITED, FULL_SUPERVISION), console="top-1", headline=True,
               summary="top-1 accuracy (percent), Resize + CenterCrop"),
    MetricSpec("top5", "top1", "top-1", EVERY_EVAL, column="Top-5", tables=(LIMITED,), console="top-5", headline=True,
               summary="top-5 accuracy (percent)"),
    # The full evaluation: CH pass, validation CGC loss, kNN.
    MetricSpec("ch", "ch", "ch", column="CH", tables=ALL_TABLES, best_in=(LIMITED,), console="CH", headline=True,
               summary="Content Heatmap, the published protocol (percent)"),
    MetricSpec("ch_strict", "ch", "ch", column="CH strict", tables=(LIMITED, ABLATION), console="CH strict",
               summary="Content Heatmap with all-zero heatmaps counted as 0 (percent)"),
    MetricSpec("ch_released_swav", "ch", "ch", column="CH rel. SwAV", tables=(LIMITED,), console="CH rel.SwAV",
               summary="Content Heatmap as the released SwAV-start script computes it (percent)"),
    MetricSpec("ch_zero", "ch", "ch", higher_is_better=False, summary="how many heatmaps are all zero (a count)"),
    MetricSpec("cgc_val_loss", "cgc-loss", "cgc-loss", column="CGC Loss", decimals=4, console="CGC loss",
               higher_is_better=False, summary="validation CGC loss, transforms seeded by image index"),
    MetricSpec("knn_top1", "knn", "knn", column="kNN", tables=(LIMITED, ABLATION), console="kNN", hparam=True,
               summary="kNN top-1 of pooled features, the labeled images as memory bank (percent)"),
    # Asked for by name only (semisup/evaluate.py --metrics iauc,dauc), appended to the run's eval.jsonl.
    MetricSpec("iauc", "iauc", "insertion", EVALUATE_ONLY, column="IAUC", optional=True, console="IAUC",
               summary="insertion AUC (percent)"),
    MetricSpec("dauc", "dauc", "insertion", EVALUATE_ONLY, column="DAUC", optional=True, console="DAUC",
               higher_is_better=False, summary="deletion AUC (percent)"),
    # Explanation consistency under the training transforms (semisup/eval/consistency.py).
    MetricSpec("consistency_r", "consistency", "consistency", EVALUATE_ONLY, column="Consist. r", decimals=3,
               optional=True, console="Cons. r",
               summary="Pearson r of the explanation of a transformed image and the transformed explanation"),
    MetricSpec("consistency_iou", "consistency", "consistency", EVALUATE_ONLY, column="Consist. IoU", optional=True,
               console="Cons. IoU", summary="IoU of their top-15 % pixels (percent)"),
):
    register_metric(_spec)


def not_meaningful(classes: int | None, arch: str | None) -> dict[str, str]:
    """{metric name: why it means nothing} for a run of ``classes`` classes with backbone ``arch``
    (None: unknown, e.g. a run of an older version). Such numbers are still computed and saved;
    the tables leave them out, saying why."""
    out = {}
    if classes is not None and classes <= 5:
        out["top5"] = f"top-5 of {classes} classes is 100 % by definition"
    if arch is not None and "resne" not in arch.lower():  # resnet*, wide_resnet*, resnext*, timm/resnet*
        # The released SwAV script reads layer4 channel c as class c's map: a ResNet's, from SwAV.
        out["ch_released_swav"] = f"CH rel. SwAV reads a ResNet's layer4 channels, not {arch}'s"
    return out


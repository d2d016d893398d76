"""The contrastive route's report rows and what is computed from them: one row per trial (MTEB
mean, the same depth untrained, their change with its paired interval, change vs all layers), the
Pareto front, the best depth within a budget, fine-tuning's effect, which depths an evaluation
cannot tell from the best one."""

from __future__ import annotations

from typing import Any, Sequence

from pipelines.route_names import CONTRASTIVE

COLUMNS = ["model", "layers", "total_layers", "origins", "parameters", "parameters_removed_pct",
           "mteb_mean", "mteb_mean_ci95_low", "mteb_mean_ci95_high",
           "untrained_mean", "untrained_mean_ci95_low", "untrained_mean_ci95_high", "change_vs_untrained",
           "change_vs_untrained_ci95_low", "change_vs_untrained_ci95_high", "change_vs_full", "latency_ms", "latency_batch_size", "peak_memory_mib", "final_loss", "status"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: as few parameters and a higher score (or as
    high a score and fewer parameters). Ordered by parameters."""
    order = sorted(range(len(points)), key=lambda k: (points[k][0], -points[k][1]))
    front, best = [], float("-inf")
    for k in order:
        if points[k][1] > best:
            front.append(k)
            best = points[k][1]
    return front


def best_within_budget(rows: list[dict[str, Any]], max_parameters: float | None,
                       max_latency_ms: float | None) -> dict[str, dict[str, Any] | None]:
    """Per model, the finished trial with the highest MTEB mean within the limits (or None)."""
    best: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        best.setdefault(row["model"], None)
        if row["status"] != "done":
            continue
        if max_parameters is not None and row["parameters"] > max_parameters:
            continue
        if max_latency_ms is not None and row["latency_ms"] > max_latency_ms:
            continue
        current = best[row["model"]]
        if current is None or (row["mteb_mean"], -row["layers"]) > (current["mteb_mean"], -current["layers"]):
            best[row["model"]] = row
    return best


def _rows(trials, outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for trial in (t for t in trials if t.objective == CONTRASTIVE):
        outcome = outcomes.get(trial.key) or {"error": "not run"}
        row = {"model": trial.model, "layers": trial.layers, "origins": list(trial.origins),
               "key": trial.key}
        if "error" in outcome:
            row.update(status="failed", error=outcome["error"])
        else:
            row.update({key: outcome.get(key) for key in COLUMNS if key not in row}, status="done",
                       **_interval_columns("mteb_mean", outcome.get("mteb_mean_interval")),
                       **_interval_columns("untrained_mean", outcome.get("untrained_mean_interval")),
                       **_interval_columns("change_vs_untrained", outcome.get("change_vs_untrained_interval")),
                       mteb_task_intervals=outcome.get("mteb_task_intervals") or {},
                       mteb_per_type=outcome["mteb_per_type"], mteb_tasks=outcome["mteb_tasks"],
                       untrained_tasks=outcome.get("untrained_tasks") or {},
                       untrained_task_intervals=outcome.get("untrained_task_intervals") or {},
                       mteb_items=outcome.get("mteb_items"),
                       training_log=outcome["training_log"],
                       probe_accuracy=outcome.get("probe_accuracy", {}))
            # Computed here, as change_vs_full: the report can be rebuilt from the two means.
            untrained = row["untrained_mean"]
            row["change_vs_untrained"] = None if untrained is None else row["mteb_mean"] - untrained
            row["change_vs_untrained_outside_interval"] = outside_untrained_interval(row)
        rows.append(row)
    for row in rows:  # change against the same model with all its layers, fine-tuned alike
        full = next((r for r in rows if r["model"] == row["model"] and r["status"] == "done"
                     and r["layers"] == r.get("total_layers")), None)
        row["change_vs_full"] = (row["mteb_mean"] - full["mteb_mean"]
                                 if full is not None and row["status"] == "done" else None)
    return rows


def _interval_columns(name: str, interval: list[float] | None) -> dict[str, Any]:
    """<name>_interval and its two ends as <name>_ci95_low / _ci95_high (None without one)."""
    return {f"{name}_interval": interval, f"{name}_ci95_low": interval[0] if interval else None,
            f"{name}_ci95_high": interval[1] if interval else None}


def outside_untrained_interval(row: dict[str, Any]) -> bool | None:
    """Whether a finished row's change vs untrained is more than this evaluation's noise: its
    paired 95% interval (both scored on the same items, resampled alike) excludes 0. A result
    written before paired intervals existed falls back to whether the trained mean lies outside
    the untrained mean's own interval (a far weaker test). None without an interval (a full
    evaluation, or no untrained score)."""
    if row.get("untrained_mean") is None:
        return None
    paired = row.get("change_vs_untrained_interval")
    if paired:
        return not paired[0] <= 0 <= paired[1]
    interval = row.get("untrained_mean_interval")
    if not interval:
        return None
    return not interval[0] <= row["mteb_mean"] <= interval[1]


def fine_tuning_effect(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Per model, the layers of its finished depths with an untrained score, by whether the change
    vs untrained is beyond the evaluation's noise (``outside_interval``: its paired 95%
    interval excludes 0) or not (``inside_interval``), or ``no_interval`` (a full evaluation:
    nothing to test the change against)."""
    kinds = {True: "outside_interval", False: "inside_interval", None: "no_interval"}
    effect: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        if row["status"] != "done" or row.get("untrained_mean") is None:
            continue
        groups = effect.setdefault(row["model"], {kind: [] for kind in kinds.values()})
        groups[kinds[row["change_vs_untrained_outside_interval"]]].append(row["layers"])
    return effect


def differences_from_best(best: dict[str, Any], rows: list[dict[str, Any]]
                          ) -> dict[int, tuple[float, list[float] | None]]:
    """Per other finished depth of ``best``'s model (by layers kept): best's MTEB mean minus its
    own, and the paired bootstrap 95% interval of that difference when both were scored on the
    same subsampled items (tasks/evaluation/bootstrap.paired_change_intervals), else None."""
    from tasks.evaluation.bootstrap import paired_change_intervals

    differences = {}
    for row in rows:
        if row["status"] != "done" or row["model"] != best["model"] or row["layers"] == best["layers"]:
            continue
        interval = None
        if best.get("mteb_items") and row.get("mteb_items"):
            interval = paired_change_intervals(best["mteb_items"], row["mteb_items"])[1]
        differences[row["layers"]] = (best["mteb_mean"] - row["mteb_mean"], interval)
    return differences


def within_interval(best: dict[str, Any], rows: list[dict[str, Any]],
                    differences: dict[int, tuple[float, list[float] | None]] | None = None) -> list[int]:
    """Layers of the other finished depths of ``best``'s model that this evaluation cannot tell
    from it: the paired 95% interval of their difference holds 0, or, for results without
    paired items (older results), their mean lies inside ``best``'s own 95% interval. Empty for
    a full evaluation (no interval). ``differences``: ``differences_from_best(best, rows)`` when
    the caller has it already (each is a paired bootstrap per depth)."""
    own = best.get("mteb_mean_interval")
    close = []
    if differences is None:
        differences = differences_from_best(best, rows)
    for layers, (difference, paired) in differences.items():
        if paired is not None:
            if paired[0] <= 0 <= paired[1]:
                close.append(layers)
        elif own and own[0] <= best["mteb_mean"] - difference <= own[1]:
            close.append(layers)
    return sorted(close, reverse=True)

"""The sweep's report: a table of every (model, depth) trial, the paper's figures, the best depth
per model within a budget. Written from the trials' result files, so it can be rebuilt any time.

Every contrastive depth stands beside itself untrained (the base model cut alike, no fine-tuning;
pipelines/untrained.py): the change between the two is what fine-tuning did.

Files in the run dir: report.md, report.csv, summary.json, plots/layer_loss-<model>.png (Figure 1),
plots/score_vs_parameters.png (Figure 5, with each model's Pareto front), plots/training_loss.png.
The classification route ("Why Lift so Heavy?") adds classification.csv, a section of report.md
(accuracy per depth, zero-shot reference, best depth; the two routes side by side),
plots/accuracy_vs_layers-<model>.png and plots/classification_training_loss.png.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from pipelines.run_store.files import write_atomic, write_csv, write_json
from pipelines.plots import (plot_accuracy_vs_layers, plot_layer_losses, plot_score_vs_parameters,
                             plot_training_curves)

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


CLASSIFICATION_COLUMNS = ["model", "dataset", "layers", "total_layers", "parameters",
                          "parameters_removed_pct", "accuracy", "macro_f1", "majority_rate",
                          "change_vs_zero_shot", "final_loss", "status"]


def _rows(trials, outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for trial in (t for t in trials if t.dataset is None):
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


def untrained_wording(model: str, groups: dict[str, list[int]], rows: list[dict[str, Any]]) -> str:
    """One sentence per model on fine-tuning's effect. A change whose 95% interval holds 0 is said
    to be indistinguishable from no change, never called a gain or a loss."""
    done = {row["layers"]: row for row in rows if row["model"] == model and row["status"] == "done"}

    def depths(layers: list[int]) -> str:
        return ", ".join(f"l{depth} ({_change_text(done[depth]['change_vs_untrained'], done[depth].get('change_vs_untrained_interval'))})"
                         for depth in layers)

    parts = []
    if groups["outside_interval"]:
        parts.append(f"beyond this evaluation's noise at {depths(groups['outside_interval'])}")
    if groups["inside_interval"]:
        noise = "it" if parts else "this evaluation's noise"  # "it": the part before names it
        parts.append(f"within {noise} at {depths(groups['inside_interval'])}, where this evaluation "
                     "does not tell the fine-tuned depth from the untrained one")
    if groups["no_interval"]:
        parts.append(f"change vs untrained at {depths(groups['no_interval'])}, from a full "
                     "evaluation (no interval to test it against)")
    return f"- **{model}**: " + "; ".join(parts) + "."


def differences_from_best(best: dict[str, Any], rows: list[dict[str, Any]]
                          ) -> dict[int, tuple[float, list[float] | None]]:
    """Per other finished depth of ``best``'s model (by layers kept): best's MTEB mean minus its
    own, and the paired bootstrap 95% interval of that difference when both were scored on the
    same subsampled items (tasks/bootstrap.paired_change_intervals), else None."""
    from tasks.bootstrap import paired_change_intervals

    differences = {}
    for row in rows:
        if row["status"] != "done" or row["model"] != best["model"] or row["layers"] == best["layers"]:
            continue
        interval = None
        if best.get("mteb_items") and row.get("mteb_items"):
            interval = paired_change_intervals(best["mteb_items"], row["mteb_items"])[1]
        differences[row["layers"]] = (best["mteb_mean"] - row["mteb_mean"], interval)
    return differences


def within_interval(best: dict[str, Any], rows: list[dict[str, Any]]) -> list[int]:
    """Layers of the other finished depths of ``best``'s model that this evaluation cannot tell
    from it: the paired 95% interval of their difference holds 0, or, for results without
    paired items (older results), their mean lies inside ``best``'s own 95% interval. Empty for
    a full evaluation (no interval)."""
    own = best.get("mteb_mean_interval")
    close = []
    for layers, (difference, paired) in differences_from_best(best, rows).items():
        if paired is not None:
            if paired[0] <= 0 <= paired[1]:
                close.append(layers)
        elif own and own[0] <= best["mteb_mean"] - difference <= own[1]:
            close.append(layers)
    return sorted(close, reverse=True)


def best_wording(best: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """"best", or "best (within the interval of l28, l15)" when other depths score inside its
    interval: a subsampled evaluation does not rank them."""
    close = within_interval(best, rows)
    return "best" if not close else f"best (within the interval of {', '.join(f'l{l}' for l in close)})"


def _mean_text(row: dict[str, Any], name: str = "mteb_mean") -> str:
    """A mean and its 95% interval when it has one; n/a without the mean (no untrained score)."""
    interval = row.get(f"{name}_interval")
    if row.get(name) is None:
        return "n/a"
    return f"{row[name]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _change_text(change: float | None, interval: list[float] | None = None) -> str:
    """A change, and its paired 95% interval when it has one; n/a without the change."""
    if change is None:
        return "n/a"
    return f"{change:+.4f}" + (f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def _markdown(config, rows, best, plans) -> str:
    lines = [f"# layercut sweep: {config.run_dir().name}", "",
             "Each depth is the model cut to *layers kept* layers (its first ones, or a keep-indices "
             "selection named in its trial key), fine-tuned with LoRA "
             "(stage 2) and evaluated on MTEB (stage 3). *Untrained*: the same depth of the base "
             "model with no fine-tuning, evaluated alike; *change vs untrained* (trained minus "
             "untrained, with the paired 95% interval of a subsampled evaluation: both scored on the "
             "same items, resampled alike) is what fine-tuning did. *Change vs full* compares with the same "
             "model keeping all its layers, fine-tuned alike. Latency: median ms per batch of "
             "documents; memory: peak while encoding (GPU allocated, or process RSS on CPU).", ""]
    for plan in (p for p in plans if p.stage1):
        stage1 = plan.stage1
        lines.append(f"- **{plan.label}** ({stage1['model']}, {stage1['num_layers']} layers): "
                     f"L3Prune small = {stage1['small']['layers']}, large = {stage1['large']['layers']} "
                     f"layers (per-layer loss: plots/layer_loss-{plan.label}.png)")
    lines += ["", "| model | layers kept | from | parameters | removed | MTEB mean [95% interval] "
              "| untrained [95% interval] | change vs untrained | change vs full "
              "| latency ms | peak MiB | final loss |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "done":
            lines.append(f"| {row['model']} | {row['layers']} | {', '.join(row['origins'])} "
                         f"| failed: {row['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['layers']}/{row['total_layers']} | {', '.join(row['origins'])} "
            f"| {row['parameters'] / 1e6:,.1f}M | {row['parameters_removed_pct']:.1f}% "
            f"| {_mean_text(row)} | {_mean_text(row, 'untrained_mean')} "
            f"| {_change_text(row['change_vs_untrained'], row.get('change_vs_untrained_interval'))} "
            f"| {_change_text(row['change_vs_full'])} "
            f"| {_fmt(row['latency_ms'], '.1f')} | {_fmt(row['peak_memory_mib'], '.0f')} "
            f"| {_fmt(row['final_loss'], '.4f')} |")
    budget = config.budget
    limits = [f"at most {budget.max_parameters:,.0f} parameters" if budget.max_parameters else "",
              f"at most {budget.max_latency_ms:g} ms latency" if budget.max_latency_ms else ""]
    limits = " and ".join(item for item in limits if item) or "no limit (set budget.max_parameters / budget.max_latency_ms)"
    lines += ["", f"## Best depth per model within the budget: {limits}", ""]
    for model, row in best.items():
        lines.append(f"- **{model}**: " + ("no finished depth fits the budget" if row is None else
                     f"{best_wording(row, rows)}: keep {row['layers']} of {row['total_layers']} layers "
                     f"({row['parameters'] / 1e6:,.1f}M parameters, MTEB mean {_mean_text(row)}, "
                     f"{_fmt(row['latency_ms'], '.1f')} ms)"))
    if any(row.get("mteb_mean_interval") for row in rows):
        lines += ["", "MTEB means of subsampled evaluations carry their 95% bootstrap interval "
                  "(resampled evaluated pairs / texts; tasks/bootstrap.py). Every depth is scored "
                  "on the same items, so a depth is compared with the best one by the paired 95% "
                  "interval of their difference (both resampled alike); where it holds 0, this "
                  "evaluation does not rank the depth below the best one."]
        lines += _best_differences_markdown(best, rows)
    lines += _effect_markdown(config, rows)
    lines += _overlap_markdown(plans)
    lines += ["", "Plots: plots/score_vs_parameters.png (score against parameters, Pareto front "
              "marked, untrained depths hollow), plots/training_loss.png (training loss of every "
              "depth).", ""]
    return "\n".join(lines)


def _best_differences_markdown(best, rows) -> list[str]:
    """Per model with paired items: the best depth's lead over each other depth, with the paired
    interval of the difference."""
    lines = []
    for model, row in best.items():
        differences = {layers: value for layers, value in differences_from_best(row, rows).items()
                       if value[1] is not None} if row else {}
        if differences:
            lines.append(f"- **{model}**, l{row['layers']} minus: " + ", ".join(
                f"l{layers} {_change_text(difference, interval)}"
                for layers, (difference, interval) in differences.items()))
    return [""] + lines if lines else []


def _effect_markdown(config, rows) -> list[str]:
    """Fine-tuning's effect per model: whether each depth's change vs untrained is beyond the
    evaluation's noise (its paired interval excludes 0)."""
    lines = ["", "## Fine-tuning's effect: each depth against itself untrained", ""]
    if not config.untrained_baseline:
        return lines + ["Not measured: `untrained_baseline: false` in the sweep config."]
    effect = fine_tuning_effect(rows)
    if not effect:
        return lines + ["No finished depth has an untrained score."]
    return lines + [untrained_wording(model, groups, rows) for model, groups in effect.items()]


def _overlap_markdown(plans) -> list[str]:
    """A warning per evaluation task whose texts occur in the model's training data."""
    marked = [(plan.label, name, counts) for plan in plans for name, counts in plan.overlap.items()
              if counts["overlapping"]]
    if not marked:
        return []
    lines = ["", "## Train/test overlap", "",
             "These tasks share texts with the model's training data (exact match after "
             "normalisation): their scores are not held-out and flatter every depth.", ""]
    lines += [f"- **{label}** / {name}: {counts['overlapping']} of {counts['texts']} evaluated texts"
              for label, name, counts in marked]
    return lines


def _training_curves(rows) -> dict[str, list[tuple[int, list[int], list[float]]]]:
    curves: dict[str, list] = {}
    for row in rows:
        if row["status"] != "done" or not Path(row["training_log"]).exists():
            continue
        with open(row["training_log"]) as handle:
            log = list(csv.DictReader(handle))
        panel = f"{row['model']} / {row['dataset']}" if row.get("dataset") else row["model"]
        curves.setdefault(panel, []).append(
            (row["layers"], [int(e["step"]) for e in log], [float(e["loss"]) for e in log]))
    return curves


def classification_rows(trials, outcomes: dict[str, dict[str, Any]],
                        zero_shot: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per classification trial; change against the unpruned model's zero-shot accuracy."""
    rows = []
    for trial in (t for t in trials if t.dataset is not None):
        outcome = outcomes.get(trial.key) or {"error": "not run"}
        row = {"model": trial.model, "dataset": trial.dataset, "layers": trial.layers,
               "origins": list(trial.origins), "key": trial.key}
        if "error" in outcome:
            row.update(status="failed", error=outcome["error"])
        else:
            row.update({key: outcome.get(key) for key in CLASSIFICATION_COLUMNS if key not in row},
                       status="done", training_log=outcome["training_log"])
        reference = zero_shot.get(f"{trial.model}-{trial.dataset}")
        row["zero_shot_accuracy"] = reference["accuracy"] if reference else None
        row["change_vs_zero_shot"] = (row["accuracy"] - reference["accuracy"]
                                      if reference and row["status"] == "done" else None)
        rows.append(row)
    return rows


def best_accuracy(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per "model/dataset", the finished depth with the highest accuracy (fewer layers on a tie)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "done":
            continue
        key = f"{row['model']}/{row['dataset']}"
        if key not in best or (row["accuracy"], -row["layers"]) > (best[key]["accuracy"], -best[key]["layers"]):
            best[key] = row
    return best


def _classification_markdown(rows, best, contrastive_rows) -> list[str]:
    lines = ["", "## Classification route: prompt-based fine-tuning of cut models", "",
             "Each depth is the model cut to its first *layers kept* layers, LM head kept, fine-tuned "
             "to put its next-token probability on the label words (stage 2, objective "
             "classification) and scored on the dataset's test split (stage 3). *vs zero-shot*: "
             "against the unpruned model with the same prompt and no training.", "",
             "| model | dataset | layers kept | parameters | removed | accuracy | macro-F1 "
             "| majority rate | vs zero-shot | final loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "done":
            lines.append(f"| {row['model']} | {row['dataset']} | {row['layers']} | failed: "
                         f"{row['error']} | | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['dataset']} | {row['layers']}/{row['total_layers']} "
            f"| {row['parameters'] / 1e6:,.1f}M | {row['parameters_removed_pct']:.1f}% "
            f"| {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['majority_rate']:.4f} "
            f"| {_change_text(row['change_vs_zero_shot'])} | {_fmt(row['final_loss'], '.4f')} |")
    lines += ["", "Best depth per model and dataset (highest accuracy; fewer layers on a tie):", ""]
    for key, row in best.items():
        reference = row["zero_shot_accuracy"]
        lines.append(f"- **{key}**: {row['layers']} of {row['total_layers']} layers, accuracy "
                     f"{row['accuracy']:.4f}" + ("" if reference is None else
                                                 f" (zero-shot, all layers: {reference:.4f})"))
    side = _side_by_side(rows, contrastive_rows)
    if side:
        lines += ["", "### The two routes side by side", "",
                  "Prompt-tuned: the cut causal LM classifies through its label words. Probe: the "
                  "contrastive (L3Prune) encoder cut to the same depth, scored by mteb's "
                  "logistic-regression classification protocol on its embeddings.", "",
                  "| model | dataset | layers kept | prompt-tuned accuracy | probe accuracy |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | {d} | {l} | {_fmt(a, '.4f')} | {_fmt(p, '.4f')} |" for m, d, l, a, p in side]
    lines += ["", "Plots: plots/accuracy_vs_layers-<model>.png (accuracy against layers kept, "
              "zero-shot reference dashed), plots/classification_training_loss.png.", ""]
    return lines


def _side_by_side(rows, contrastive_rows) -> list[tuple]:
    """(model, dataset, layers, prompt-tuned accuracy, probe accuracy) wherever either exists for
    a model that ran both routes."""
    from tasks.mteb_tasks import probe_task_name

    probes = {}
    for row in contrastive_rows:
        for task, score in (row.get("probe_accuracy") or {}).items():
            probes[(row["model"], task, row["layers"])] = score
    if not probes:
        return []
    tuned = {(r["model"], r["dataset"], r["layers"]): r["accuracy"] for r in rows if r["status"] == "done"}
    out = []
    for model, dataset in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        task = probe_task_name(dataset)
        depths = {l for (m, d, l) in tuned if (m, d) == (model, dataset)} |                  {l for (m, t, l) in probes if (m, t) == (model, task)}
        out += [(model, dataset, depth, tuned.get((model, dataset, depth)),
                 probes.get((model, task, depth))) for depth in sorted(depths, reverse=True)]
    return out


def _classification_plots(rows, plans, zero_shot, plots: Path) -> None:
    for plan in (p for p in plans if p.classifiers):
        series = {name: [(r["layers"], r["accuracy"]) for r in rows if r["status"] == "done"
                         and r["model"] == plan.label and r["dataset"] == name]
                  for name in plan.classifiers}
        references = {name: zero_shot[f"{plan.label}-{name}"]["accuracy"]
                      for name in plan.classifiers if f"{plan.label}-{name}" in zero_shot}
        plot_accuracy_vs_layers({k: v for k, v in series.items() if v}, references,
                                plan.total_layers, f"{plan.label}: prompt-tuned accuracy of the "
                                "model cut to l layers", plots / f"accuracy_vs_layers-{plan.label}.png")
    plot_training_curves(_training_curves(rows), plots / "classification_training_loss.png",
                         ylabel="classification loss")


def write_report(run_dir: Path, config, plans, trials, outcomes,
                 zero_shot: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    zero_shot = zero_shot or {}
    rows = _rows(trials, outcomes)
    best = best_within_budget(rows, config.budget.max_parameters, config.budget.max_latency_ms)
    plots = run_dir / "plots"
    for plan in (p for p in plans if p.stage1):
        stage1_dir = plan.layer_loss.run_dir()
        losses = [entry["loss"] for entry in json.loads((stage1_dir / "layer_losses.json").read_text())["layers"]]
        plot_layer_losses(losses, plan.stage1["small"]["layers"], plan.stage1["large"]["layers"],
                          f"{plan.label}: loss of the model cut to l layers",
                          plots / f"layer_loss-{plan.label}.png")
    done = [row for row in rows if row["status"] == "done"]
    series, intervals, untrained = {}, {}, {}
    for model in dict.fromkeys(row["model"] for row in done):
        points = [(row["parameters"], row["mteb_mean"], row["layers"]) for row in done if row["model"] == model]
        series[model] = (points, pareto_front([(p, s) for p, s, _ in points]))
        intervals[model] = [row.get("mteb_mean_interval") for row in done if row["model"] == model]
        untrained[model] = [(row["parameters"], row["untrained_mean"]) for row in done
                            if row["model"] == model and row["untrained_mean"] is not None]
    if rows:
        plot_score_vs_parameters(series, plots / "score_vs_parameters.png", intervals, untrained)
        plot_training_curves(_training_curves(rows), plots / "training_loss.png")
    classified = classification_rows(trials, outcomes, zero_shot)
    best_classified = best_accuracy(classified)
    markdown = _markdown(config, rows, best, plans) if rows else f"# layercut sweep: {run_dir.name}\n"
    if classified:
        _classification_plots(classified, plans, zero_shot, plots)
        write_csv(run_dir / "classification.csv", CLASSIFICATION_COLUMNS + ["zero_shot_accuracy"],
                  [[row.get(c) for c in CLASSIFICATION_COLUMNS + ["zero_shot_accuracy"]]
                   for row in classified])
        markdown += "\n".join(_classification_markdown(classified, best_classified, rows))

    write_csv(run_dir / "report.csv", COLUMNS + ["mteb_per_type"],
              [[";".join(row[c]) if c == "origins" else row.get(c) for c in COLUMNS]
               + [json.dumps(row.get("mteb_per_type"))] for row in rows])
    write_atomic(run_dir / "report.md", markdown)
    # The evaluated items stay in the trials' result files (report.py reads them there).
    summary = {"run_dir": str(run_dir), "trials": [{k: v for k, v in row.items() if k != "mteb_items"}
                                                   for row in rows],
               "pareto_front": {model: [series[model][0][k][2] for k in front]
                                for model, (_, front) in series.items()},
               "best_within_budget": {model: (row["layers"] if row else None) for model, row in best.items()},
               # Per model: the depths this evaluation does not tell from the best one (the
               # paired interval of their difference holds 0; within_interval).
               "best_within_interval_of": {model: within_interval(row, rows) if row else []
                                           for model, row in best.items()},
               # Per model: its depths whose change vs untrained is beyond / within this
               # evaluation's noise (paired interval), or that have no interval (a full evaluation).
               "fine_tuning_effect": fine_tuning_effect(rows),
               "budget": config.budget.model_dump(),
               "stage1": {plan.label: {"small": plan.stage1["small"]["layers"],
                                       "large": plan.stage1["large"]["layers"],
                                       "num_layers": plan.stage1["num_layers"]}
                          for plan in plans if plan.stage1},
               "classification": {
                   "trials": classified,
                   "best_depth": {key: row["layers"] for key, row in best_classified.items()},
                   "zero_shot": {key: value["accuracy"] for key, value in zero_shot.items()}},
               "overlap": {plan.label: plan.overlap for plan in plans if plan.overlap},
               "failed": [row["key"] for row in rows + classified if row["status"] != "done"]}
    write_json(run_dir / "summary.json", summary)
    return summary

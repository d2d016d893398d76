"""The contrastive route's part of the sweep report: report.md's main table (each depth beside
itself untrained; pipelines/routes/contrastive/untrained.py), the best depth per model within the
budget, fine-tuning's effect, the train/test overlap; report.csv; the paper's figures:
plots/layer_loss-<model>.png (Figure 1), plots/score_vs_parameters.png (Figure 5, with each
model's Pareto front), plots/training_loss.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.plots import plot_layer_losses, plot_score_vs_parameters, plot_training_curves, stored_as
from pipelines.report_text import change_text, fmt, training_curves
from pipelines.routes.base import RouteReport
from pipelines.routes.contrastive.rows import (COLUMNS, _rows, best_within_budget, differences_from_best,
                                               fine_tuning_effect, pareto_front, within_interval)
from pipelines.run_store.files import RunFiles
from pipelines.run_store.run import RunStore


def untrained_wording(model: str, groups: dict[str, list[int]], rows: list[dict[str, Any]]) -> str:
    """One sentence per model on fine-tuning's effect. A change whose 95% interval holds 0 is said
    to be indistinguishable from no change, never called a gain or a loss."""
    done = {row["layers"]: row for row in rows if row["model"] == model and row["status"] == "done"}

    def depths(layers: list[int]) -> str:
        return ", ".join(f"l{depth} ({change_text(done[depth]['change_vs_untrained'], done[depth].get('change_vs_untrained_interval'))})"
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


def best_wording(best: dict[str, Any], rows: list[dict[str, Any]],
                 differences: dict[int, tuple[float, list[float] | None]] | None = None) -> str:
    """"best", or "best (within the interval of l28, l15)" when other depths score inside its
    interval: a subsampled evaluation does not rank them. ``differences``: as ``within_interval``'s."""
    close = within_interval(best, rows, differences)
    return "best" if not close else f"best (within the interval of {', '.join(f'l{l}' for l in close)})"


def _mean_text(row: dict[str, Any], name: str = "mteb_mean") -> str:
    """A mean and its 95% interval when it has one; n/a without the mean (no untrained score)."""
    interval = row.get(f"{name}_interval")
    if row.get(name) is None:
        return "n/a"
    return f"{row[name]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _leads(best, rows) -> dict[str, dict[int, tuple[float, list[float] | None]]]:
    """Per model, its best depth's difference from each other depth (``differences_from_best``:
    a paired bootstrap each), computed once for the wording, the differences line and summary.json."""
    return {model: differences_from_best(row, rows) if row else {} for model, row in best.items()}


def _markdown(config, rows, best, plans, leads=None) -> str:
    """report.md's contrastive section, below the title: the stage-1 picks, the table of depths,
    the best depth within the budget (``leads``: ``_leads(best, rows)``, computed here when not
    given), fine-tuning's effect, the train/test overlap."""
    leads = _leads(best, rows) if leads is None else leads
    lines = ["", "Each depth is the model cut to *layers kept* layers (its first ones, or a keep-indices "
             "selection named in its trial key), fine-tuned with LoRA "
             "(stage 2) and evaluated on MTEB (stage 3). *Untrained*: the same depth of the base "
             "model with no fine-tuning, evaluated alike; *change vs untrained* (trained minus "
             "untrained, with the paired 95% interval of a subsampled evaluation: both scored on the "
             "same items, resampled alike) is what fine-tuning did. *Change vs full* compares with the same "
             "model keeping all its layers, fine-tuned alike. Latency: median ms per batch of "
             "documents; memory: peak while encoding (GPU allocated, or process RSS on CPU).", ""]
    for plan in (p for p in plans if p.stage1 is not None):
        stage1 = plan.stage1
        lines.append(f"- **{plan.label}** ({stage1.model}, {stage1.num_layers} layers): "
                     f"L3Prune small = {stage1.small.layers}, large = {stage1.large.layers} "
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
            f"| {change_text(row['change_vs_untrained'], row.get('change_vs_untrained_interval'))} "
            f"| {change_text(row['change_vs_full'])} "
            f"| {fmt(row['latency_ms'], '.1f')} | {fmt(row['peak_memory_mib'], '.0f')} "
            f"| {fmt(row['final_loss'], '.4f')} |")
    budget = config.budget
    limits = [f"at most {budget.max_parameters:,.0f} parameters" if budget.max_parameters else "",
              f"at most {budget.max_latency_ms:g} ms latency" if budget.max_latency_ms else ""]
    limits = " and ".join(item for item in limits if item) or "no limit (set budget.max_parameters / budget.max_latency_ms)"
    lines += ["", f"## Best depth per model within the budget: {limits}", ""]
    for model, row in best.items():
        lines.append(f"- **{model}**: " + ("no finished depth fits the budget" if row is None else
                     f"{best_wording(row, rows, leads[model])}: keep {row['layers']} of {row['total_layers']} layers "
                     f"({row['parameters'] / 1e6:,.1f}M parameters, MTEB mean {_mean_text(row)}, "
                     f"{fmt(row['latency_ms'], '.1f')} ms)"))
    if any(row.get("mteb_mean_interval") for row in rows):
        lines += ["", "MTEB means of subsampled evaluations carry their 95% bootstrap interval "
                  "(resampled evaluated pairs / texts; tasks/evaluation/bootstrap.py). Every depth is scored "
                  "on the same items, so a depth is compared with the best one by the paired 95% "
                  "interval of their difference (both resampled alike); where it holds 0, this "
                  "evaluation does not rank the depth below the best one."]
        lines += _best_differences_markdown(best, leads)
    lines += _effect_markdown(config, rows)
    lines += _overlap_markdown(plans)
    lines += ["", "Plots: plots/score_vs_parameters.png (score against parameters, Pareto front "
              "marked, untrained depths hollow), plots/training_loss.png (training loss of every "
              "depth).", ""]
    return "\n".join(lines)


def _best_differences_markdown(best, leads) -> list[str]:
    """Per model with paired items: the best depth's lead over each other depth, with the paired
    interval of the difference (``leads``: per model, ``differences_from_best`` of its best)."""
    lines = []
    for model, row in best.items():
        differences = {layers: value for layers, value in leads[model].items() if value[1] is not None}
        if differences:
            lines.append(f"- **{model}**, l{row['layers']} minus: " + ", ".join(
                f"l{layers} {change_text(difference, interval)}"
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


def _figures(plans, rows, files: RunFiles) -> dict[str, tuple[list[tuple[float, float, int]], list[int]]]:
    """The layer-loss figure of each model with stage 1, the score against parameters and the
    training curves, into plots/ of the run directory of ``files``; returns {model: ((parameters,
    MTEB mean, layers) per finished depth, indices of its Pareto front)}."""
    for plan in (p for p in plans if p.stage1 is not None):
        stage1 = RunStore(plan.layer_loss.run_dir()).files
        losses = [entry["loss"] for entry in stage1.read_json("layer_losses.json")["layers"]]
        plot_layer_losses(losses, plan.stage1.small.layers, plan.stage1.large.layers,
                          f"{plan.label}: loss of the model cut to l layers",
                          stored_as(files, f"plots/layer_loss-{plan.label}.png"))
    done = [row for row in rows if row["status"] == "done"]
    series, intervals, untrained = {}, {}, {}
    for model in dict.fromkeys(row["model"] for row in done):
        points = [(row["parameters"], row["mteb_mean"], row["layers"]) for row in done if row["model"] == model]
        series[model] = (points, pareto_front([(p, s) for p, s, _ in points]))
        intervals[model] = [row.get("mteb_mean_interval") for row in done if row["model"] == model]
        untrained[model] = [(row["parameters"], row["untrained_mean"]) for row in done
                            if row["model"] == model and row["untrained_mean"] is not None]
    if rows:
        plot_score_vs_parameters(series, stored_as(files, "plots/score_vs_parameters.png"),
                                 intervals, untrained)
        plot_training_curves(training_curves(rows), stored_as(files, "plots/training_loss.png"))
    return series


def report(config, plans, trials, outcomes: dict[str, dict[str, Any]], references: dict[str, Any],
           run_dir: Path | str, earlier: dict[str, RouteReport]) -> RouteReport:
    """The contrastive trials' rows, figures, report.csv, report.md section and summary.json keys
    (trials, pareto_front, best_within_budget, best_within_interval_of, fine_tuning_effect,
    budget, stage1)."""
    rows = _rows(trials, outcomes)
    best = best_within_budget(rows, config.budget.max_parameters, config.budget.max_latency_ms)
    leads = _leads(best, rows)
    files = RunStore(run_dir).files
    series = _figures(plans, rows, files)
    files.write_csv("report.csv", COLUMNS + ["mteb_per_type"],
              [[";".join(row[c]) if c == "origins" else row.get(c) for c in COLUMNS]
               + [json.dumps(row.get("mteb_per_type"))] for row in rows])
    # The evaluated items stay in the trials' result files (the report reads them there).
    summary = {"trials": [{k: v for k, v in row.items() if k != "mteb_items"} for row in rows],
               "pareto_front": {model: [series[model][0][k][2] for k in front]
                                for model, (_, front) in series.items()},
               "best_within_budget": {model: (row["layers"] if row else None) for model, row in best.items()},
               # Per model: the depths this evaluation does not tell from the best one (the
               # paired interval of their difference holds 0; within_interval).
               "best_within_interval_of": {model: within_interval(row, rows, leads[model]) if row else []
                                           for model, row in best.items()},
               # Per model: its depths whose change vs untrained is beyond / within this
               # evaluation's noise (paired interval), or that have no interval (a full evaluation).
               "fine_tuning_effect": fine_tuning_effect(rows),
               "budget": config.budget.model_dump(),
               "stage1": {plan.label: {"small": plan.stage1.small.layers,
                                       "large": plan.stage1.large.layers,
                                       "num_layers": plan.stage1.num_layers}
                          for plan in plans if plan.stage1 is not None}}
    return RouteReport(rows, _markdown(config, rows, best, plans, leads) if rows else "", summary)

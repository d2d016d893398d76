"""The classification route's part of the sweep report ("Why Lift so Heavy?"): accuracy per
depth against the unpruned model's zero-shot accuracy, the best depth per model and dataset, the
two routes side by side (prompt-tuned accuracy beside the contrastive encoder's probe);
classification.csv, plots/accuracy_vs_layers-<model>.png, plots/classification_training_loss.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.plots import plot_accuracy_vs_layers, plot_training_curves, stored_as
from pipelines.report_text import change_text, fmt, training_curves
from pipelines.routes.base import RouteReport
from pipelines.run_store.files import RunFiles
from pipelines.run_store.run import RunStore
from pipelines.route_names import CLASSIFICATION, CONTRASTIVE

if TYPE_CHECKING:
    from pipelines.results import ClassifyResult

CLASSIFICATION_COLUMNS = ["model", "dataset", "layers", "total_layers", "parameters",
                          "parameters_removed_pct", "accuracy", "macro_f1", "majority_rate",
                          "change_vs_zero_shot", "final_loss", "status"]


def classification_rows(trials, outcomes: dict[str, dict[str, Any]],
                        zero_shot: dict[str, ClassifyResult]) -> list[dict[str, Any]]:
    """One row per classification trial; change against the unpruned model's zero-shot accuracy."""
    rows = []
    for trial in (t for t in trials if t.objective == CLASSIFICATION):
        outcome = outcomes.get(trial.key) or {"error": "not run"}
        row = {"model": trial.model, "dataset": trial.dataset, "layers": trial.layers,
               "origins": list(trial.origins), "key": trial.key}
        if "error" in outcome:
            row.update(status="failed", error=outcome["error"])
        else:
            row.update({key: outcome.get(key) for key in CLASSIFICATION_COLUMNS if key not in row},
                       status="done", training_log=outcome["training_log"])
        reference = zero_shot.get(f"{trial.model}-{trial.dataset}")
        row["zero_shot_accuracy"] = reference.accuracy if reference else None
        row["change_vs_zero_shot"] = (row["accuracy"] - reference.accuracy
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
            f"| {change_text(row['change_vs_zero_shot'])} | {fmt(row['final_loss'], '.4f')} |")
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
        lines += [f"| {m} | {d} | {l} | {fmt(a, '.4f')} | {fmt(p, '.4f')} |" for m, d, l, a, p in side]
    lines += ["", "Plots: plots/accuracy_vs_layers-<model>.png (accuracy against layers kept, "
              "zero-shot reference dashed), plots/classification_training_loss.png.", ""]
    return lines


def _side_by_side(rows, contrastive_rows) -> list[tuple]:
    """(model, dataset, layers, prompt-tuned accuracy, probe accuracy) wherever either exists for
    a model that ran both routes."""
    from tasks.evaluation.mteb_tasks import probe_task_name

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


def _classification_plots(rows, plans, zero_shot, files: RunFiles) -> None:
    """plots/accuracy_vs_layers-<model>.png per model, plots/classification_training_loss.png."""
    for plan in (p for p in plans if p.classifiers):
        series = {name: [(r["layers"], r["accuracy"]) for r in rows if r["status"] == "done"
                         and r["model"] == plan.label and r["dataset"] == name]
                  for name in plan.classifiers}
        references = {name: zero_shot[f"{plan.label}-{name}"].accuracy
                      for name in plan.classifiers if f"{plan.label}-{name}" in zero_shot}
        plot_accuracy_vs_layers({k: v for k, v in series.items() if v}, references,
                                plan.total_layers, f"{plan.label}: prompt-tuned accuracy of the "
                                "model cut to l layers",
                                stored_as(files, f"plots/accuracy_vs_layers-{plan.label}.png"))
    plot_training_curves(training_curves(rows), stored_as(files, "plots/classification_training_loss.png"),
                         ylabel="classification loss")


def report(config, plans, trials, outcomes: dict[str, dict[str, Any]],
           references: dict[str, ClassifyResult], run_dir: Path | str,
           earlier: dict[str, RouteReport]) -> RouteReport:
    """The classification trials' rows against the zero-shot ``references``
    ({"<label>-<dataset>": stage 3's ``ClassifyResult``}); with any trial, its figures, classification.csv and
    report.md section (beside the contrastive probes of ``earlier``). summary.json's key:
    classification."""
    zero_shot = references
    classified = classification_rows(trials, outcomes, zero_shot)
    best = best_accuracy(classified)
    markdown = ""
    if classified:
        files = RunStore(run_dir).files
        _classification_plots(classified, plans, zero_shot, files)
        files.write_csv("classification.csv", CLASSIFICATION_COLUMNS + ["zero_shot_accuracy"],
                  [[row.get(c) for c in CLASSIFICATION_COLUMNS + ["zero_shot_accuracy"]]
                   for row in classified])
        probed = earlier[CONTRASTIVE].rows if CONTRASTIVE in earlier else []
        markdown = "\n".join(_classification_markdown(classified, best, probed))
    summary = {"classification": {
        "trials": classified,
        "best_depth": {key: row["layers"] for key, row in best.items()},
        "zero_shot": {key: value.accuracy for key, value in zero_shot.items()}}}
    return RouteReport(classified, markdown, summary)

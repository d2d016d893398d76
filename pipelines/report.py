"""The sweep's report: each route's section of report.md, its CSV and plots, and summary.json.
Written from the trials' result files, so it can be rebuilt any time.

Files in the run dir: report.md (the title, then each route's section in pipelines.routes.ROUTES
order), summary.json (run_dir, each route's keys, the train/test overlap, the failed trials),
and what each route writes (pipelines/routes/<route>/report.py): the contrastive route
report.csv, plots/layer_loss-<model>.png (Figure 1), plots/score_vs_parameters.png (Figure 5,
with each model's Pareto front), plots/training_loss.png; the classification route ("Why Lift so
Heavy?") classification.csv, plots/accuracy_vs_layers-<model>.png and
plots/classification_training_loss.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.results import SweepResult
from pipelines.routes.registry import ROUTES
from pipelines.routes.base import RouteReport
from pipelines.run_store.run import RunStore


def write_report(run_dir: Path | str, config, plans, trials, outcomes,
                 references: dict[str, dict[str, Any]] | None = None) -> SweepResult:
    """report.md, summary.json and every route's files in ``run_dir`` (a path or a URI); returns
    the sweep's result (summary.json's record).

    Args:
        config: the sweep's ``SweepConfig``; plans: its ``ModelPlan``s; trials: every ``Trial``.
        outcomes: {trial key: result.json's record, or {"error": one line}}.
        references: {route name: what its trials are compared with (``Route.references``)}.
    """
    references = references or {}
    parts: dict[str, RouteReport] = {}
    for name, route in ROUTES.items():
        parts[name] = route.report(config, plans, trials, outcomes, references.get(name, {}),
                                   run_dir, dict(parts))
    markdown = f"# layercut sweep: {Path(config.run_name()).name}\n" + "".join(part.markdown for part in parts.values())
    files = RunStore(run_dir).files
    files.write_text("report.md", markdown)
    routes: dict[str, Any] = {}
    for part in parts.values():
        routes.update(part.summary)
    summary = SweepResult(run_dir=str(run_dir), routes=routes,
                          overlap={plan.label: plan.overlap for plan in plans if plan.overlap},
                          failed=[key for part in parts.values() for key in part.failed])
    files.write_json("summary.json", summary.to_json())
    return summary

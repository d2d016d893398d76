"""A route is a plug-in: a third route, defined in this module and registered in ``ROUTES``, is
resolved, planned, given trial specs, fingerprinted and reported by the sweep's own modules, and
its artifact written by the export through its own writer, with no edit anywhere else.

What a new route still adds outside its package is its name in pipelines/route_names.py (the
schemas validate ``objectives`` against it without importing the routes); a test cannot extend
that ``Literal``, so the config here names the route the way a validated config would once the
name is there (see ``_config``). Nothing here mocks Ray or transformers: the sweep runs no trial
(outcomes are given, as Tune would return them) and the export exports a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import load_config
from pipelines.routes.base import Route, RouteReport, nothing
from pipelines.routes.registry import ROUTES, routes_of
from pipelines.schemas.sweep import SweepConfig
from pipelines.sweep_guard import _settings, fingerprint
from pipelines.sweep_models import resolve_models
from pipelines.sweep_plan import depth_origins, trials_of
from pipelines.sweep_trials import plan_trials, trial_specs
from tasks.errors import LayercutError

ECHO = "echo"  # the third route: trains as the embedding route does, scores each depth by one number


def _resolve(context, plan) -> None:
    """Its settings live in ``plan.routes`` (it has no field in ``ModelPlan``)."""
    plan.routes[ECHO] = {"finetune": plan.finetune, "repeats": 2}


def _trials(plan, total: int, options) -> list:
    return trials_of(ECHO, plan.label, depth_origins(plan.grid, total, "grid", f"{plan.label}'s echo grid"))


def _report(config, plans, trials, outcomes, references, run_dir: Path, earlier) -> RouteReport:
    rows = [{"key": t.key, "model": t.model, "layers": t.layers,
             "status": "done" if "echo_score" in outcomes.get(t.key, {}) else "failed",
             "echo_score": outcomes.get(t.key, {}).get("echo_score")}
            for t in trials if t.objective == ECHO]
    (run_dir / "echo.csv").write_text("".join(f"{r['key']},{r['echo_score']}\n" for r in rows))
    markdown = "\n## Echo\n\n" + "".join(f"- {r['key']}: {r['echo_score']}\n" for r in rows)
    return RouteReport(rows, markdown, {ECHO: {"best": max(rows, key=lambda r: r["echo_score"] or 0)["key"],
                                               "earlier": list(earlier)}})


ECHO_ROUTE = Route(
    name=ECHO,
    training=ROUTES["contrastive"].training,  # stage 2 as the embedding route trains
    active=lambda plan: ECHO in plan.routes,
    resolve=_resolve,
    stage_workers=lambda plan: [],
    check_inputs=nothing,
    prepare=nothing,
    trials=_trials,
    preview=lambda plan, same, config: [],
    serving_texts=lambda plan, count: None,
    references=lambda config, plans, run_dir: {},
    finetune_config=lambda plan, trial: plan.routes[ECHO]["finetune"],
    trial_configs=lambda config, plan, trial: {"configs": {"repeats": plan.routes[ECHO]["repeats"]}},
    evaluate_trial=lambda spec, trained: {"echo_score": 1.0},
    tune_metrics=lambda result: {},
    report=_report,
)


@pytest.fixture
def echo_registered(monkeypatch):
    """ROUTES with the echo route after the built-in ones (the one line of registry.py)."""
    monkeypatch.setitem(ROUTES, ECHO, ECHO_ROUTE)


def _config(tmp_path) -> SweepConfig:
    config = load_config(SweepConfig, None, [], {
        "output_dir": str(tmp_path), "name": "plugin", "grid": [2, 1],
        "models": [{"config": "smollm2-135m", "objectives": ["classification"]}],
        "classification": {"datasets": ["sst2"], "layers": [1]}})
    # A config names the route once pipelines/route_names.py has its name (see the docstring).
    config.models[0].objectives.append(ECHO)
    return config


def test_a_registered_route_is_resolved_planned_and_specified(tmp_path, echo_registered):
    config = _config(tmp_path)
    (plan,) = resolve_models(config)
    assert [route.name for route in routes_of(plan)] == ["classification", ECHO]
    # Its stage configs' models are checked reachable with the others' (sweep.admit).
    model = (plan.finetune.model.name_or_path, plan.finetune.model.revision)
    assert plan.base_models() == [model, model, model]  # stage 2, the sst2 classifier's, echo's
    plan.total_layers = 30  # what a route's prepare sets (the classification route reads the model's config)

    trials = plan_trials([plan], use_l3prune=False, route=config.classification)
    assert [(t.key, t.objective) for t in trials] == [
        ("smollm2-135m-sst2-l1", "classification"), ("smollm2-135m-l2", ECHO), ("smollm2-135m-l1", ECHO)]
    specs = trial_specs(config, [plan], trials, {}, tmp_path)
    echo = specs["smollm2-135m-l2"]
    assert echo.objective == ECHO and echo.configs == {"repeats": 2}
    assert echo.finetune.layers.select(30).count == 2 and echo.finetune.name == "smollm2-135m-l2/finetune"
    assert specs["smollm2-135m-sst2-l1"].configs == {}

    # sweep.json fingerprints the route's own settings; a plan without any keeps the keys (and
    # so the fingerprint) every earlier sweep.json has.
    assert _settings(plan)["routes"][ECHO]["repeats"] == 2
    before = fingerprint(plan)
    plan.routes[ECHO]["repeats"] = 3
    assert fingerprint(plan) != before
    plan.routes.clear()
    assert list(_settings(plan)) == ["layer_loss", "finetune", "finetune_workers", "evaluate",
                                     "probe_tasks", "classifiers", "classify"]


def test_the_report_iterates_a_registered_route(tmp_path, echo_registered):
    from pipelines.report import write_report

    config = _config(tmp_path)
    (plan,) = resolve_models(config)
    plan.total_layers = 30
    trials = plan_trials([plan], use_l3prune=False, route=config.classification)
    outcomes: dict[str, Any] = {"smollm2-135m-sst2-l1": {"error": "not run here"},
                                "smollm2-135m-l2": {"echo_score": 0.5}, "smollm2-135m-l1": {"echo_score": 0.75}}
    summary = write_report(tmp_path, config, [plan], trials, outcomes)

    report = (tmp_path / "report.md").read_text()
    assert report.endswith("\n## Echo\n\n- smollm2-135m-l2: 0.5\n- smollm2-135m-l1: 0.75\n")  # after the built-in ones
    assert summary.routes[ECHO] == {"best": "smollm2-135m-l1", "earlier": ["contrastive", "classification"]}
    assert json.loads((tmp_path / "summary.json").read_text())[ECHO]["best"] == "smollm2-135m-l1"  # routes' keys at the top
    assert (tmp_path / "echo.csv").read_text() == "smollm2-135m-l2,0.5\nsmollm2-135m-l1,0.75\n"
    assert summary.failed == ["smollm2-135m-sst2-l1"]


class EchoWriter:
    """A third kind of artifact: a file of its own, one key of layercut.json, its own card."""

    name = ECHO

    def write(self, staging: Path, model, tokenizer, info) -> dict[str, Any]:
        tokenizer.save_pretrained(staging)
        (staging / "echo.txt").write_text(f"{info.layers} layers\n")
        return {"echo": {"repeats": 2}}

    def card(self, info) -> str:
        return f"# echo of {info.base_model}\n"


def test_the_export_writes_a_route_writers_artifact(tmp_path, tiny_causal_lm):
    """The export's shared mechanics around a writer it has never heard of; without a writer,
    an objective it does not ship is refused in one line."""
    from tasks.export.artifact import ArtifactInfo, export_artifact, read_layercut_file
    from tasks.model.lora import LoraSettings, add_lora
    from tasks.model.models import ModelSource, ModelSpec

    spec = ModelSpec(ModelSource(tiny_causal_lm, True), layers=2, dtype="float32", device="cpu")
    model, _ = spec.load()
    add_lora(model, LoraSettings()).save_pretrained(tmp_path / "adapter")
    fields = dict(base_model="tiny", base_model_path=tiny_causal_lm, layers=2, total_layers=6,
                  parameters=1, parameters_full=2, training={}, lora=None, final_loss=None,
                  steps_done=0, workers=1, data="none", objective=ECHO)
    with pytest.raises(LayercutError, match="no artifact writer for objective 'echo'"):
        ArtifactInfo(**fields).artifact_writer()

    target = export_artifact(spec, tmp_path / "adapter", tmp_path / "model",
                             ArtifactInfo(**fields, writer=EchoWriter()))
    assert list(read_layercut_file(target)) == ["format", "objective", "base_model", "layers", "total_layers",
                                                "parameters", "parameters_full", "final_loss", "steps", "echo"]
    assert read_layercut_file(target)["objective"] == ECHO
    assert (target / "echo.txt").read_text() == "2 layers\n"
    assert (target / "README.md").read_text() == "# echo of tiny\n"

"""The main job's parts without running it: config validation, trial planning, resource checks,
the report's Pareto front and budget choice, each depth beside itself untrained, evaluation
subsampling."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import _results
from conftest import SHARED_DATA
from pipelines.config import find_config, load_config
from pipelines.routes.contrastive.rows import best_within_budget, pareto_front
from pipelines.schemas.sweep import DEFAULT_GRID
from pipelines.sweep import ModelPlan, SweepConfig, check_resources, plan_trials, resolve_models
from tasks.errors import LayercutError
from tasks.model.depth import Depth


def _config(tmp_path, cli=(), **tree) -> SweepConfig:
    base = {"output_dir": str(tmp_path), "models": [{"config": "smollm2-135m"}]}
    return load_config(SweepConfig, None, list(cli), {**base, **tree})


@pytest.mark.parametrize("tree, message", [
    ({"grid": []}, "grid: Value error, the grid is empty"),
    ({"grid": ["keep:0.5", "keep:1.5"]}, "grid.1: Value error, depth 'keep:1.5': a keep fraction lies in (0, 1]"),
    ({"grid": [1.0, 0.5]}, "grid.0: Value error, depth 1.0 is ambiguous: write prune:1.0"),
    ({"gird": [0.5]}, "gird: unknown key"),
    ({"models": []}, "name at least one model"),
    ({"models": [{"config": "smollm2-135m"}, {"config": "smollm2-135m"}]}, "labels must differ"),
    ({"models": [{"config": "smollm2-135m", "grid": []}]}, "the grid is empty"),
    ({"models": [{"config": "smollm2-135m", "label": "a/b"}]}, "a label names directories"),
    ({"tune": {"max_concurrent_trials": 0}}, "positive number or 'auto'"),
    ({"latency": {"texts": 4, "batch_size": 4}}, "at least 2 x latency.batch_size"),
    ({"untrained_baselines": False}, "untrained_baselines: unknown key"),
    ({"untrained_baseline": "sometimes"}, "untrained_baseline: Input should be a valid boolean"),
])
def test_config_errors(tmp_path, tree, message):
    with pytest.raises(LayercutError, match="invalid config") as error:
        _config(tmp_path, **tree)
    assert message in str(error.value)


def test_packaged_sweep_configs_load_and_resolve(tmp_path):
    for name in ("smollm2-135m", "four-families", "smollm2-135m-classification", "why-lift-so-heavy"):
        config = load_config(SweepConfig, find_config(name, "run"), [f"output_dir={tmp_path}"])
        plans = resolve_models(config)
        assert [plan.label for plan in plans] == [entry.name() for entry in config.models]
        for plan in plans:  # every stage writes inside the sweep's run dir
            assert str(config.run_dir().resolve()) in str(plan.finetune.run_dir(1, "").resolve())
    cluster = resolve_models(load_config(SweepConfig, find_config("four-families", "run"),
                                         [f"output_dir={tmp_path}"]))
    assert all(stage.workers.wait_for_resources and stage.workers.use_gpu is True
               for plan in cluster for stage in (plan.layer_loss, plan.finetune, plan.evaluate))
    # The paper's recipe is the same for all four: a global batch of 512 (8 GPUs x 64).
    assert {plan.label: plan.finetune.workers.num_workers * plan.finetune.training.batch_size
            for plan in cluster} == dict.fromkeys(["llama3-8b", "mistral-7b", "qwen2-7b", "phi3-mini"], 512)


def test_a_bad_key_in_a_stage_override_fails_before_any_work(tmp_path):
    config = _config(tmp_path, overrides={"finetune": {"training": {"stpes": 3}}})
    with pytest.raises(LayercutError, match=r"finetune config of smollm2-135m: .*training.stpes: unknown key"):
        resolve_models(config)


def test_a_task_typo_fails_before_any_work(tmp_path):
    config = _config(tmp_path, overrides={"evaluate": {"tasks": ["STSBenchmrk"]}})
    with pytest.raises(LayercutError, match="did you mean STSBenchmark"):
        resolve_models(config)


def test_autoscaling_needs_explicit_workers(tmp_path):
    config = _config(tmp_path, tune={"autoscaling": True})
    with pytest.raises(LayercutError, match="set num_workers and use_gpu explicitly"):
        resolve_models(config)


def _plan(grid, total=30, small=7, large=21) -> ModelPlan:
    # Planning reads only the grid and stage 1; the stage configs are not needed (an evaluate
    # config marks the contrastive route).
    return ModelPlan("m", None, None, "an evaluate config", grid, stage1=_results.stage1(total, small, large))


def test_trials_join_the_grid_and_the_l3prune_picks():
    grid = [Depth.parse(d) for d in ("keep:1.0", "keep:0.5", "keep:0.7", "prune:0.5", 1)]
    trials = plan_trials([_plan(grid)], use_l3prune=True)
    assert [(t.layers, t.origins) for t in trials] == [
        (30, ("grid keep:1.0",)), (21, ("grid keep:0.7", "l3prune-large")),
        (15, ("grid keep:0.5", "grid prune:0.5")), (7, ("l3prune-small",)), (1, ("grid 1",))]
    assert [t.layers for t in plan_trials([_plan([Depth.parse("keep:0.5")])], use_l3prune=False)] == [15]
    # The official rule is a floor, not a rounding: keep 90 % of 32 layers is 28 (round: 29).
    assert [t.layers for t in plan_trials([_plan(list(DEFAULT_GRID), total=32, small=5, large=29)],
                                          use_l3prune=False)] == [32, 28, 25, 22, 19, 16, 12, 9, 6]
    with pytest.raises(LayercutError, match="m's grid: depth 31 is out of range"):
        plan_trials([_plan([Depth.parse(31)])], use_l3prune=False)
    assert trials[1].key == "m-l21"


def test_one_l3prune_pick_joins_the_grid_alone():
    """`l3prune: small` (or large) adds that pick only; other values are refused at load."""
    plan = _plan([Depth.parse("keep:0.2")])
    assert [(t.layers, t.origins) for t in plan_trials([plan], use_l3prune="small")] == [
        (7, ("l3prune-small",)), (6, ("grid keep:0.2",))]
    assert [(t.layers, t.origins) for t in plan_trials([plan], use_l3prune="large")] == [
        (21, ("l3prune-large",)), (6, ("grid keep:0.2",))]
    assert SweepConfig.model_validate({"models": [{"config": "smollm2-135m"}], "l3prune": "small"}).l3prune == "small"
    with pytest.raises(ValidationError, match="l3prune"):
        SweepConfig.model_validate({"models": [{"config": "smollm2-135m"}], "l3prune": "medium"})


def test_resources_no_node_can_satisfy_are_an_error(tmp_path, ray_cluster):
    # The session's local cluster has 2 CPUs and no autoscaler.
    cases = [({"workers": {"num_workers": 3, "cpus_per_worker": 1}}, "finetune needs 3 worker"),
             ({"workers": {"num_workers": 1, "cpus_per_worker": 4}}, "largest node: {'CPU': 2.0}"),
             ({"workers": {"num_workers": 1, "use_gpu": True}}, "has no GPU")]
    for finetune, message in cases:
        plans = resolve_models(_config(tmp_path, overrides={"finetune": finetune}))
        with pytest.raises(LayercutError, match=message.replace("{", r"\{").replace("(", r"\(")):
            check_resources(plans, _config(tmp_path).tune)
    for stage in ("evaluate", "layer_loss"):
        plans = resolve_models(_config(tmp_path, overrides={stage: {"workers": {"cpus_per_worker": 3}}}))
        with pytest.raises(LayercutError, match=f"{stage} needs 1 worker"):
            check_resources(plans, _config(tmp_path).tune)
    # Fits: as many trials at once as the limiting resource allows.
    plans = resolve_models(_config(tmp_path, overrides={"finetune": {"workers": {"num_workers": 1}}}))
    assert check_resources(plans, _config(tmp_path).tune) == 2
    assert check_resources(plans, _config(tmp_path, tune={"max_concurrent_trials": 1}).tune) == 1
    with pytest.raises(LayercutError, match="driver_resources"):
        check_resources(plans, _config(tmp_path, tune={"driver_resources": {"trial_driver": 1}}).tune)


def test_pareto_front_by_hand():
    # (parameters, score): 3 is dominated by 1 (more parameters, lower score); 4 ties 2's size.
    points = [(10, 0.50), (20, 0.60), (30, 0.70), (25, 0.55), (20, 0.58), (5, 0.40)]
    assert pareto_front(points) == [5, 0, 1, 2]
    assert pareto_front([]) == []


def test_best_depth_within_a_budget():
    rows = [{"model": "a", "layers": 30, "parameters": 100, "latency_ms": 50, "mteb_mean": 0.70, "status": "done"},
            {"model": "a", "layers": 15, "parameters": 55, "latency_ms": 26, "mteb_mean": 0.69, "status": "done"},
            {"model": "a", "layers": 8, "parameters": 30, "latency_ms": 14, "mteb_mean": 0.60, "status": "done"},
            {"model": "a", "layers": 4, "parameters": 20, "status": "failed"},
            {"model": "b", "layers": 10, "parameters": 500, "latency_ms": 90, "mteb_mean": 0.9, "status": "done"}]
    pick = lambda best: {model: row and row["layers"] for model, row in best.items()}  # noqa: E731
    assert pick(best_within_budget(rows, None, None)) == {"a": 30, "b": 10}
    assert pick(best_within_budget(rows, 60, None)) == {"a": 15, "b": None}
    assert pick(best_within_budget(rows, None, 20)) == {"a": 8, "b": None}
    assert pick(best_within_budget(rows, 60, 20)) == {"a": 8, "b": None}


def test_each_contrastive_trial_evaluates_its_depth_untrained_unless_switched_off(tmp_path):
    """The untrained evaluation is the trial's stage-3 config on the finetune config's base model
    cut to the trial's depth, with the input format and pooling the artifact records (finetune's
    encoder section, tasks/export/artifact.py ArtifactInfo), which here differ from evaluate's own."""
    from pipelines.sweep import trial_specs

    base = str(tmp_path / "base-model")
    tree = {"models": [{"config": "smollm2-135m", "objectives": ["contrastive", "classification"]}],
            "classification": {"datasets": ["sst2"], "layers": [4]},
            "overrides": {"finetune": {"model": {"name_or_path": base, "dtype": "bfloat16"},
                                       "encoder": {"max_length": 48, "pool_closing_tokens": True}},
                          "evaluate": {"model": {"dtype": "float32"}, "max_samples_per_split": 20}}}
    config = _config(tmp_path, **tree)
    (plan,) = resolve_models(config)
    plan.total_layers = 30
    plan.stage1 = _results.stage1(30, 7, 21)
    trials = plan_trials([plan], use_l3prune=True, route=config.classification)
    specs = trial_specs(config, [plan], trials, {}, tmp_path)
    contrastive = [t for t in trials if t.dataset is None]
    assert contrastive and len(contrastive) < len(trials)
    evaluate, finetune = plan.evaluate, plan.finetune
    assert evaluate.encoder.prompt() != finetune.encoder.prompt()  # else the test proves nothing
    for trial in contrastive:
        untrained = specs[trial.key].untrained
        assert untrained.name == f"{trial.key}/untrained" and untrained.layers == Depth.parse(trial.layers)
        assert untrained.model.name_or_path == base and untrained.model.dtype == "float32"
        assert untrained.encoder.prompt() == finetune.encoder.prompt()
        assert untrained.encoder.pooling == finetune.encoder.pooling
        assert untrained.encoder.forward_batch_size == evaluate.encoder.forward_batch_size
        rest = {"name", "model", "layers", "encoder"}  # tasks, subsample, instructions, splits...
        assert untrained.model_dump(exclude=rest) == evaluate.model_dump(exclude=rest)
    assert all(specs[t.key].untrained is None for t in trials if t.dataset is not None)
    off = _config(tmp_path, **tree, untrained_baseline=False)
    assert all(spec.untrained is None for spec in trial_specs(off, [plan], trials, {}, tmp_path).values())


def test_a_trial_records_its_depth_untrained_and_a_finished_one_evaluates_nothing(tmp_path, monkeypatch):
    """trial.execute with its stages replaced by stand-ins that return fixed summaries (the stages
    are tested on their own): result.json holds both evaluations, the change is their difference,
    a finished trial runs no stage again, and a spec without an untrained config runs none."""
    from pipelines import evaluate, finetune, trial
    from pipelines.routes.contrastive import trial as contrastive_trial
    from pipelines.evaluate import EvaluateConfig

    means = {"k/evaluate": 0.70, "k/untrained": 0.60}
    runs = []

    gold = [float(k % 6) for k in range(40)]
    predicted = {"k/evaluate": [g + (k % 3) / 4 for k, g in enumerate(gold)],
                 "k/untrained": [g + (k % 5) for k, g in enumerate(gold)]}

    def evaluated(config):
        runs.append(config.name)
        mean = means[config.name]
        items = {"STSBenchmark": {"main_score": "cosine_spearman", "statistic": "spearman",
                                  "parts": {"default/test": {"gold": gold, "predicted": predicted[config.name]}}}}
        return _results.evaluated(
            mean=mean, mean_per_type={"STS": mean}, mean_interval=[mean - 0.05, mean + 0.05],
            tasks=[{"task": "STSBenchmark", "main_score": mean, "interval": [mean - 0.05, mean + 0.05]}],
            texts_per_second=10.0, items=items)

    trained = _results.finetuned(artifact=str(tmp_path / "model"), model="base", total_layers=6, parameters=4,
                                 parameters_full=6, parameters_removed_pct=33.3, final_loss=0.5, first_loss=1.0,
                                 steps=3)
    monkeypatch.setattr(evaluate, "run", evaluated)
    monkeypatch.setattr(finetune, "run", lambda config: trained)
    monkeypatch.setattr(contrastive_trial, "_card_scores", lambda *args: None)

    def spec(result_dir, untrained):
        return trial.TrialSpec(key="k", model="m", layers=4, origins=("grid 4",), finetune=None,
                               evaluate=EvaluateConfig(), latency_texts=[], latency_batch_size=1,
                               result_dir=str(result_dir), untrained=untrained)

    result = trial.execute(spec(tmp_path / "on", EvaluateConfig(name="k/untrained")))
    assert runs == ["k/evaluate", "k/untrained"]
    assert result["mteb_mean"] == 0.70 and result["untrained_mean"] == 0.60
    assert result["change_vs_untrained"] == 0.70 - 0.60
    assert result["untrained_mean_interval"] == [0.60 - 0.05, 0.60 + 0.05]
    # The change's interval pairs the two evaluations' items (tasks/evaluation/bootstrap.py, tested there).
    from tasks.evaluation.bootstrap import paired_change_intervals

    per_task, paired = paired_change_intervals(evaluated(EvaluateConfig(name="k/evaluate")).items,
                                               evaluated(EvaluateConfig(name="k/untrained")).items)
    del runs[2:]
    assert paired is not None and result["change_vs_untrained_interval"] == paired
    assert result["change_vs_untrained_task_intervals"] == per_task
    assert result["untrained_tasks"] == {"STSBenchmark": 0.60} and result["mteb_tasks"] == {"STSBenchmark": 0.70}
    assert (tmp_path / "on" / "result.json").exists()
    assert trial.execute(spec(tmp_path / "on", EvaluateConfig(name="k/untrained"))) == result
    assert runs == ["k/evaluate", "k/untrained"]  # resumed: nothing evaluated again
    off = trial.execute(spec(tmp_path / "off", None))
    assert runs[2:] == ["k/evaluate"] and not any(key.startswith("untrained") for key in off)
    assert "change_vs_untrained" not in off


def test_result_json_keys_of_each_route_in_their_order(tmp_path, monkeypatch):
    """Both routes' evaluate_trial, their stages replaced by stand-ins: result.json's keys, stage
    2's (pipelines/routes/base.trial_result) around each route's own, in the order every
    result.json has had."""
    from pipelines import classify, evaluate
    from pipelines.evaluate import EvaluateConfig
    from pipelines.routes.classification import trial as classification_trial
    from pipelines.routes.contrastive import trial as contrastive_trial
    from pipelines.schemas.classify import ClassifyConfig
    from pipelines.trial import TrialSpec

    monkeypatch.setattr(evaluate, "run", lambda config: _results.evaluated(texts_per_second=1.0))
    monkeypatch.setattr(classify, "run", lambda config: _results.classified())
    monkeypatch.setattr(contrastive_trial, "_card_scores", lambda *args: None)
    spec = TrialSpec(key="k", model="m", layers=1, origins=("grid 1",), finetune=None,
                     evaluate=EvaluateConfig(), latency_texts=[], latency_batch_size=1,
                     result_dir=str(tmp_path), untrained=EvaluateConfig(name="k/untrained"),
                     probe_tasks=("LayercutSST2",), dataset="sst2", classify=ClassifyConfig())
    trained = _results.finetuned(artifact=str(tmp_path / "model"))
    stage2_before = ["trial", "model", "base_model"]
    stage2_size = ["layers", "total_layers", "origins", "parameters", "parameters_full",
                   "parameters_removed_pct"]
    stage2_training = ["final_loss", "first_loss", "steps"]
    stage2_after = ["artifact", "training_log", "train_workers"]
    scores = [f"{prefix}_{key}" for prefix in ("mteb", "untrained")
              for key in ("mean", "per_type", "tasks", "mean_interval", "task_intervals")]
    assert list(contrastive_trial.evaluate_trial(spec, trained)) == [
        *stage2_before, *stage2_size, *scores, "change_vs_untrained", "change_vs_untrained_interval",
        "change_vs_untrained_task_intervals", *stage2_training, "encode_texts_per_second",
        *stage2_after, "probe_accuracy", "mteb_items"]
    assert list(classification_trial.evaluate_trial(spec, trained)) == [
        *stage2_before, "objective", "dataset", *stage2_size, "accuracy", "macro_f1",
        "majority_rate", "test_examples", *stage2_training, "classify_texts_per_second",
        *stage2_after]


def test_latency_is_measured_after_the_trials_one_depth_at_a_time(tmp_path, monkeypatch, capsys):
    """routes/contrastive/serving.py: each finished contrastive depth measured once, in order (per
    model, deepest first), never two at once; failed trials and other routes left alone; a rerun
    measures only what it has not, or what ran again; a failed measurement is n/a and retried.
    (The measurement itself, a Ray task on the artifact, runs in tests/test_main_job.py.)"""
    import threading

    from pipelines.routes.contrastive import serving
    from pipelines.trial import TrialSpec

    calls, running, lock = [], [0], threading.Lock()

    def measure(spec, artifact):
        with lock:
            running[0] += 1
            assert running[0] == 1, "two measurements at once"
        calls.append((spec.key, artifact))
        with lock:
            running[0] -= 1
        if spec.key == "b-l2" and len(calls) == 3:
            raise RuntimeError("Traceback...\nCUDA out of memory")
        return {"latency_ms": float(spec.layers), "latency_batch_size": 4, "peak_memory_mib": 10.0 * spec.layers,
                "memory_kind": "process_rss"}

    monkeypatch.setattr(serving, "measure", measure)

    def spec(key, model, layers, objective="contrastive"):
        return TrialSpec(key=key, model=model, layers=layers, origins=("grid",), finetune=None, latency_texts=[],
                         latency_batch_size=4, result_dir=str(tmp_path / key), objective=objective)

    specs = {s.key: s for s in (spec("a-l2", "a", 2), spec("a-l6", "a", 6), spec("b-l2", "b", 2),
                                spec("b-l4", "b", 4), spec("a-sst2-l2", "a", 2, "classification"))}
    outcomes = {"a-l2": {"artifact": "art/a2", "mteb_mean": 0.5}, "a-l6": {"artifact": "art/a6", "mteb_mean": 0.6},
                "b-l2": {"artifact": "art/b2", "mteb_mean": 0.4}, "b-l4": {"error": "not finished"},
                "a-sst2-l2": {"artifact": "art/c", "accuracy": 0.9}}
    measured = serving.measure_finished(specs, outcomes)
    assert calls == [("a-l6", "art/a6"), ("a-l2", "art/a2"), ("b-l2", "art/b2")]
    assert measured["a-l6"] == {"artifact": "art/a6", "mteb_mean": 0.6, "latency_ms": 6.0, "latency_batch_size": 4,
                                "peak_memory_mib": 60.0, "memory_kind": "process_rss"}
    assert measured["b-l4"] == outcomes["b-l4"] and measured["a-sst2-l2"] == outcomes["a-sst2-l2"]
    assert measured["b-l2"]["latency_ms"] is None and not (tmp_path / "b-l2" / serving.SERVING_FILE).exists()
    err = capsys.readouterr().err
    assert "layercut: could not measure b-l2 (latency and memory stay n/a; a rerun measures it again): " \
           "CUDA out of memory\n" in err
    assert err.count("layercut: measuring encode latency and memory of ") == 3

    # The rerun: a-l6 and a-l2 are read back; b-l2 is measured again, as is a-l2 after its trial
    # ran again (another result).
    outcomes["a-l2"] = {"artifact": "art/a2", "mteb_mean": 0.55}
    again = serving.measure_finished(specs, outcomes)
    assert calls[3:] == [("a-l2", "art/a2"), ("b-l2", "art/b2")]
    assert again["a-l6"] == measured["a-l6"] and again["b-l2"]["latency_ms"] == 2.0
    assert serving.measure_finished(specs, outcomes) == again and len(calls) == 5


def _untrained_outcomes() -> dict[str, dict]:
    """Trial results as trial.execute writes them: "tiny" subsampled (intervals), its l2 from
    before the untrained baseline; "whole" evaluated in full (no interval)."""
    def result(layers, mean, interval, untrained, untrained_interval, total=6, paired="none"):
        scores = {} if untrained is None else {
            "untrained_mean": untrained, "untrained_mean_interval": untrained_interval,
            "untrained_tasks": {"STSBenchmark": untrained}, "untrained_task_intervals": {"STSBenchmark": untrained_interval}}
        if paired != "none":  # a result with the change's paired interval (absent: an older result)
            scores.update(change_vs_untrained_interval=paired,
                          change_vs_untrained_task_intervals={"STSBenchmark": paired})
        return {"total_layers": total, "parameters": layers * 1e6, "parameters_removed_pct": 0.0,
                "mteb_mean": mean, "mteb_mean_interval": interval, "mteb_per_type": {},
                "mteb_tasks": {"STSBenchmark": mean}, "training_log": "no-such-log.csv",
                "latency_ms": 1.0, "peak_memory_mib": 1.0, "final_loss": 1.0, **scores}
    # tiny-l6 and tiny-l5: the paired interval excludes 0, though l5's trained mean lies inside
    # its untrained mean's own interval (pairing cancels the noise both share); tiny-l4: it holds 0;
    # tiny-l3: an older result without a paired interval, judged by the untrained mean's interval.
    return {"tiny-l6": result(6, 0.70, [0.63, 0.77], 0.60, [0.52, 0.67], paired=[0.05, 0.15]),
            "tiny-l5": result(5, 0.63, [0.56, 0.70], 0.60, [0.53, 0.66], paired=[0.01, 0.05]),
            "tiny-l4": result(4, 0.62, [0.55, 0.69], 0.60, [0.53, 0.66], paired=[-0.01, 0.05]),
            "tiny-l3": result(3, 0.55, [0.48, 0.62], 0.45, [0.38, 0.52]),
            "tiny-l2": result(2, 0.51, [0.44, 0.58], None, None),  # no untrained score
            "tiny-l1": {"error": "boom"},
            "whole-l3": result(3, 0.50, None, 0.45, None, total=3)}


def test_report_shows_each_depth_untrained_the_change_and_whether_it_is_noise(tmp_path):
    """report.md, report.csv and summary.json from constructed trial results: the untrained mean
    beside the trained one, change_vs_untrained equal to the difference of the two means as
    Python computes it here, and the change called indistinguishable where the trained mean lies
    inside the untrained mean's interval."""
    import csv
    import json

    from pipelines.report import write_report
    from pipelines.routes.contrastive.report import _markdown
    from pipelines.sweep import Trial

    trials = [Trial("tiny", layers, ("grid",)) for layers in (6, 5, 4, 3, 2, 1)] + [Trial("whole", 3, ("grid",))]
    config = _config(tmp_path, name="report")
    summary = write_report(tmp_path, config, [], trials, _untrained_outcomes())
    rows = {row["key"]: row for row in summary.routes["trials"]}
    assert rows["tiny-l6"]["change_vs_untrained"] == 0.70 - 0.60
    assert rows["tiny-l4"]["change_vs_untrained"] == 0.62 - 0.60
    assert rows["whole-l3"]["change_vs_untrained"] == 0.50 - 0.45
    assert rows["tiny-l2"]["untrained_mean"] is None and rows["tiny-l2"]["change_vs_untrained"] is None
    assert [rows[key]["change_vs_untrained_outside_interval"]
            for key in ("tiny-l6", "tiny-l5", "tiny-l4", "tiny-l3", "tiny-l2", "whole-l3")] == [
        True, True, False, True, None, None]
    assert rows["tiny-l6"]["untrained_tasks"] == {"STSBenchmark": 0.60}
    assert rows["tiny-l6"]["untrained_mean_ci95_low"] == 0.52 and rows["tiny-l6"]["untrained_mean_ci95_high"] == 0.67
    assert summary.routes["fine_tuning_effect"] == {
        "tiny": {"outside_interval": [6, 5, 3], "inside_interval": [4], "no_interval": []},
        "whole": {"outside_interval": [], "inside_interval": [], "no_interval": [3]}}
    assert json.loads((tmp_path / "summary.json").read_text())["fine_tuning_effect"] == summary.routes["fine_tuning_effect"]

    with open(tmp_path / "report.csv") as handle:
        table = {(row["model"], row["layers"]): row for row in csv.DictReader(handle)}
    assert float(table[("tiny", "6")]["untrained_mean"]) == 0.60
    assert float(table[("tiny", "6")]["change_vs_untrained"]) == 0.70 - 0.60
    assert float(table[("tiny", "6")]["untrained_mean_ci95_low"]) == 0.52
    assert float(table[("tiny", "6")]["change_vs_untrained_ci95_low"]) == 0.05
    assert float(table[("tiny", "6")]["change_vs_untrained_ci95_high"]) == 0.15
    assert table[("tiny", "3")]["change_vs_untrained_ci95_low"] == ""
    assert table[("tiny", "2")]["untrained_mean"] == table[("tiny", "2")]["change_vs_untrained"] == ""

    report = (tmp_path / "report.md").read_text()
    assert "| MTEB mean [95% interval] | untrained [95% interval] | change vs untrained | change vs full |" in report
    assert "| 0.7000 [0.6300, 0.7700] | 0.6000 [0.5200, 0.6700] | +0.1000 [+0.0500, +0.1500] | +0.0000 |" in report
    assert "| 0.5500 [0.4800, 0.6200] | 0.4500 [0.3800, 0.5200] | +0.1000 | -0.1500 |" in report
    assert "| 0.5100 [0.4400, 0.5800] | n/a | n/a |" in report
    assert "| 0.5000 | 0.4500 | +0.0500 |" in report
    assert ("- **tiny**: beyond this evaluation's noise at l6 (+0.1000 [+0.0500, +0.1500]), "
            "l5 (+0.0300 [+0.0100, +0.0500]), l3 (+0.1000); within it at l4 (+0.0200 [-0.0100, +0.0500]), "
            "where this evaluation does not tell the fine-tuned depth from the untrained one.") in report
    assert ("- **whole**: change vs untrained at l3 (+0.0500), from a full evaluation (no interval to "
            "test it against).") in report
    # A model whose every change is within the noise: the sentence names the noise itself.
    from pipelines.routes.contrastive.report import untrained_wording

    assert untrained_wording("tiny", {"outside_interval": [], "inside_interval": [4], "no_interval": []},
                             summary.routes["trials"]) == (
        "- **tiny**: within this evaluation's noise at l4 (+0.0200 [-0.0100, +0.0500]), where this "
        "evaluation does not tell the fine-tuned depth from the untrained one.")
    assert all(line.count("|") == 13 for line in report.splitlines() if line.startswith("| tiny |"))
    assert (tmp_path / "plots" / "score_vs_parameters.png").stat().st_size > 10_000

    off = _config(tmp_path, name="report", untrained_baseline=False)
    assert "Not measured: `untrained_baseline: false`" in _markdown(off, [], {}, [])


def test_untrained_depths_are_hollow_markers_on_the_score_plot(tmp_path):
    from pipelines.plots import plot_score_vs_parameters

    points = [(6e6, 0.70, 6), (4e6, 0.62, 4)]
    plain, hollow = tmp_path / "plain.png", tmp_path / "hollow.png"
    plot_score_vs_parameters({"tiny": (points, [1, 0])}, plain)
    plot_score_vs_parameters({"tiny": (points, [1, 0])}, hollow, untrained={"tiny": [(6e6, 0.60), (4e6, 0.30)]})
    assert hollow.read_bytes() != plain.read_bytes()


def test_subsampled_tasks_keep_a_seeded_subset_and_refuse_other_types():
    from tasks.evaluation.mteb_tasks import load_task, subsample_task

    full = load_task("STSBenchmark", str(SHARED_DATA))
    full.load_data()
    first = subsample_task(load_task("STSBenchmark", str(SHARED_DATA)), 50)
    second = subsample_task(load_task("STSBenchmark", str(SHARED_DATA)), 50)
    assert len(first.dataset["test"]) == 50 and first.dataset["test"]["sentence1"] == second.dataset["test"]["sentence1"]
    assert set(first.dataset["test"]["sentence1"]) <= set(full.dataset["test"]["sentence1"])
    assert len(first.dataset["train"]) == len(full.dataset["train"])  # only evaluation splits
    import mteb

    with pytest.raises(LayercutError, match="SciFact is a Retrieval task"):
        subsample_task(mteb.get_task("SciFact"), 50)


def test_a_changed_model_config_is_refused_once_it_has_results(tmp_path):
    from pipelines.sweep import guard_and_record

    config = _config(tmp_path, name="guarded")
    run_dir = config.run_dir()
    guard_and_record(run_dir, config, resolve_models(config))
    changed = _config(tmp_path, ["overrides.finetune.training.steps=7"], name="guarded")
    # Nothing computed yet (e.g. the first run stopped on a resource error): a fix is welcome.
    guard_and_record(run_dir, changed, resolve_models(changed))
    (run_dir / "trials" / "smollm2-135m-l15" / "finetune").mkdir(parents=True)
    with pytest.raises(LayercutError, match="holds results of smollm2-135m with a different configuration"):
        guard_and_record(run_dir, config, resolve_models(config))
    # Where and on how many CPUs the work runs, or a wider grid, change no result.
    moved = _config(tmp_path, ["overrides.finetune.training.steps=7", "grid=[keep:1.0, keep:0.3]",
                               "overrides.evaluate.workers.cpus_per_worker=1"], name="guarded")
    guard_and_record(run_dir, moved, resolve_models(moved))


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from pipelines.cli import main

    cases = [(["--config", "no-such-sweep"], "config 'no-such-sweep' not found"),
             (["grid=[]"], "the grid is empty"),
             (["tune.autoscale=true"], "tune.autoscale: unknown key")]
    for argv, message in cases:
        code = main(["run", "--output-dir", str(tmp_path), *argv])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and line.startswith("layercut: error:") and message in line, (argv, line)


def test_cluster_configs_are_well_formed():
    """What can be checked without a cloud: the files parse, the launcher has a CPU head and
    autoscaling GPU worker types, the RayJob autoscales and runs the sweep, and both runtime
    envs keep models, data and results out of the upload."""
    import yaml

    from conftest import REPO

    cluster = REPO / "cluster"
    launcher = yaml.safe_load((cluster / "aws-autoscaling.yaml").read_text())
    types = launcher["available_node_types"]
    assert types[launcher["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu_types)
    job = yaml.safe_load((cluster / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"]
    assert "pipelines.sweep" in job["spec"]["entrypoint"]
    assert all(group["minReplicas"] == 0 for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    for name in ("runtime_env.yaml", "runtime_env_pip.yaml"):
        env = yaml.safe_load((cluster / name).read_text())
        assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    # What it installs is the one requirements file (read as Ray reads it in test_cluster_files.py).
    assert yaml.safe_load((cluster / "runtime_env_pip.yaml").read_text())["pip"]["packages"] == "cluster/requirements.txt"


# --- the classification route ------------------------------------------------------------------

@pytest.mark.parametrize("tree, message", [
    ({"classification": {"datasets": ["agnews"]}}, "datasets are distinct packaged names"),
    ({"classification": {"datasets": []}}, "datasets are distinct packaged names"),
    ({"classification": {"layers": [0, 2]}}, "classification.layers.0: Value error, depth 0: a layer count is at least 1"),
    ({"models": [{"config": "smollm2-135m", "objectives": []}]}, "name each objective once"),
    ({"models": [{"config": "smollm2-135m", "objectives": ["regression"]}]}, "objectives.0"),
])
def test_classification_route_config_errors(tmp_path, tree, message):
    with pytest.raises(LayercutError, match="invalid config") as error:
        _config(tmp_path, **tree)
    assert message in str(error.value)


def test_classification_route_resolves_per_dataset_configs(tmp_path):
    config = _config(tmp_path, models=[{"config": "smollm2-135m",
                                        "objectives": ["contrastive", "classification"]}],
                     classification={"datasets": ["sst2", "trec"], "layers": [1, 4]},
                     overrides={"classify": {"max_test_rows": 50}})
    (plan,) = resolve_models(config)
    assert plan.contrastive and set(plan.classifiers) == set(plan.classify) == {"sst2", "trec"}
    for name in ("sst2", "trec"):
        assert plan.classifiers[name].objective == "classification"
        assert plan.classifiers[name].classification.dataset == name
        assert plan.classify[name].classification.dataset == name
        assert plan.classify[name].max_test_rows == 50
    assert plan.finetune.objective == "contrastive"
    assert plan.probe_tasks == ["LayercutSST2", "LayercutTREC"]
    only = resolve_models(_config(tmp_path, models=[{"config": "smollm2-135m",
                                                     "objectives": ["classification"]}]))[0]
    assert not only.contrastive and only.layer_loss is None and not only.probe_tasks

    plan.total_layers = 30
    plan.stage1 = _results.stage1(30, 7, 21)
    trials = plan_trials([plan], use_l3prune=True, route=config.classification)
    keys = [t.key for t in trials]
    assert keys[-4:] == ["smollm2-135m-sst2-l4", "smollm2-135m-sst2-l1",
                         "smollm2-135m-trec-l4", "smollm2-135m-trec-l1"]
    assert all(t.objective == "contrastive" for t in trials[:-4])
    too_deep = config.classification.model_copy(update={"layers": [Depth.parse(31)]})
    with pytest.raises(LayercutError, match=r"classification.layers of smollm2-135m: depth 31 is out of range"):
        plan_trials([plan], use_l3prune=True, route=too_deep)


def test_classification_report_rows_best_depth_and_side_by_side():
    from pipelines.routes.classification.report import _side_by_side, best_accuracy, classification_rows
    from pipelines.sweep import Trial

    trials = [Trial("m", 4, ("layers",), "sst2"), Trial("m", 2, ("layers",), "sst2"),
              Trial("m", 1, ("layers",), "sst2"), Trial("m", 4, ("grid keep:1.0",))]
    done = {"total_layers": 4, "parameters": 10, "parameters_removed_pct": 0.0, "macro_f1": 0.5,
            "majority_rate": 0.5, "final_loss": 0.3, "training_log": "x"}
    outcomes = {"m-sst2-l4": {**done, "accuracy": 0.8}, "m-sst2-l2": {**done, "accuracy": 0.8},
                "m-sst2-l1": {"error": "boom"}}
    rows = classification_rows(trials, outcomes, {"m-sst2": _results.classified(accuracy=0.6)})
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert rows[0]["change_vs_zero_shot"] == pytest.approx(0.2)
    assert best_accuracy(rows)["m/sst2"]["layers"] == 2  # a tie goes to fewer layers
    contrastive = [{"model": "m", "layers": 4, "probe_accuracy": {"LayercutSST2": 0.7}}]
    # Depths where either route has a score (the failed 1-layer trial has none).
    assert _side_by_side(rows, contrastive) == [("m", "sst2", 4, 0.8, 0.7), ("m", "sst2", 2, 0.8, None)]


def test_plan_prints_the_trials_without_training(tmp_path, capsys):
    """`layercut run --plan`: the local default's trials from its grid, the L3Prune picks as
    "after stage 1" until stage 1 has run in this run dir, then as the depths it picked."""
    import json

    from pipelines.cli import main
    from pipelines.sweep import guard_and_record

    argv = ["run", "--plan", "--output-dir", str(tmp_path), "--data-root", str(SHARED_DATA)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["smollm2-135m: 30 layers, global batch 8 (2 workers x 4), 32 steps",
                     "  smollm2-135m-l15: 15/30 layers (grid keep:0.5)",
                     "  smollm2-135m: L3Prune small and large depths after stage 1"]
    assert not any(tmp_path.iterdir())  # nothing was run or written

    # Stage 1 of this configuration has run (its selection.json, as layer_loss writes it: the
    # result's record).
    config = load_config(SweepConfig, find_config("smollm2-135m", "run"),
                         [f"output_dir={tmp_path}", f"data_root={SHARED_DATA}"])
    plans = resolve_models(config)
    guard_and_record(config.run_dir(), config, plans)
    stage1 = plans[0].layer_loss.run_dir()
    stage1.mkdir(parents=True)
    (stage1 / "selection.json").write_text(json.dumps(_results.stage1(30, 6, 22).to_json()))
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  smollm2-135m-l22: 22/30 layers (l3prune-large)",
        "  smollm2-135m-l15: 15/30 layers (grid keep:0.5)",
        "  smollm2-135m-l6: 6/30 layers (l3prune-small)"]
    # Another stage-1 configuration: its picks are not this run's.
    assert main([*argv, "overrides.layer_loss.data.num_batches=2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  smollm2-135m: L3Prune small and large depths after stage 1"


def test_a_bare_fraction_on_the_command_line_is_refused(capsys):
    from pipelines.cli import main

    assert main(["finetune", "--layers", "0.3"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("layercut: error: invalid config") and line.endswith(
        "layers: Value error, depth 0.3 is ambiguous: write prune:0.3 "
        "(removes that fraction of the last layers, the paper's p), keep:0.3, or a layer count")


def test_a_stage_refuses_another_routes_artifact_in_one_line():
    """Stage 3 (MTEB) scores the contrastive route's artifacts, evaluate-classifier the
    classification route's; each refuses the other's naming the command that scores it (the
    route's own words, pipelines/routes/<route>/artifact.py). An artifact without an objective
    predates the classification route: contrastive."""
    from pipelines.route_names import ROUTE_NAMES
    from pipelines.routes.artifacts import refuse_other_routes
    from pipelines.routes.registry import ROUTES

    assert tuple(ROUTES) == ROUTE_NAMES == ("contrastive", "classification")
    refuse_other_routes("m", None, "classification")  # not an artifact: a base model
    refuse_other_routes("m", {}, "contrastive")
    refuse_other_routes("m", {"objective": "classification"}, "classification")
    with pytest.raises(LayercutError) as error:
        refuse_other_routes("runs/x/model", {"objective": "classification"}, "contrastive")
    assert str(error.value) == ("runs/x/model is a prompt-based classifier (classification objective); "
                                "score it with `layercut evaluate-classifier`")
    with pytest.raises(LayercutError) as error:
        refuse_other_routes("runs/y/model", {}, "classification")
    assert str(error.value) == ("runs/y/model is an embedding model (contrastive objective); "
                                "evaluate it with `layercut evaluate` (mteb)")


def test_the_default_finetune_run_name_carries_the_classification_dataset(tmp_path):
    """finetune-<model>-l<layers>, and for the classification objective its dataset before the
    depth (the route's ``name_suffix``)."""
    from pipelines.routes.registry import ROUTES
    from pipelines.schemas.finetune import FinetuneConfig

    for tree, name in (({}, "finetune-smollm2-135m-l4"),
                       ({"objective": "classification", "classification": {"dataset": "sst2"}},
                        "finetune-smollm2-135m-sst2-l4")):
        config = FinetuneConfig.model_validate({"output_dir": str(tmp_path), **tree})
        suffix = ROUTES[config.objective].training.name_suffix(config)
        assert config.run_dir(4, suffix) == tmp_path / name

"""Stage 3: MTEB evaluation with mteb's own tasks and evaluators, spread over Ray workers.

    layercut evaluate --model <artifact dir | hub id | built-in> --tasks quick [--layers N]
    python -m pipelines.evaluate --model smollm2-135m --layers 8 --tasks STSBenchmark

Each worker (one GPU each on a cluster) loads the model once and runs whole tasks: one worker is a
Ray streaming task in a pooled worker process, several are a pool of Ray actors.
Results: mteb's own per-task JSON files under results/ (mteb's tooling reads them), and a
summary (summary.md, summary.csv): main score per task, mean per task type, overall mean,
parameters, layers and encode throughput.

Finished tasks are not run again, but only under the same fingerprint: the model's content (not
its folder name), depth, dtype, input format, pooling and subsample decide every score, and each
task's instruction, data, subsets and splits decide its own (fingerprint.json in the run dir). The
default run directory carries the fingerprint in its name, so two models or settings never share
one; a named directory holding results of other inputs is refused with the difference.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from pipelines.commands import Stage, run_as_script
from pipelines.config import CONFIG_DIR, dump_config
from pipelines.fingerprints import describe_difference, digest
from pipelines.outputs import write_atomic, write_csv, write_json
from pipelines.ray_runtime import plan_workers, stream_in_one_task, user_errors_from_ray
from pipelines.schemas.evaluate import STAGE, EvaluateConfig
from tasks.errors import LayercutError
from tasks.models import resolve_model
from tasks.mteb_model import model_meta
from tasks.model_identity import model_identity
from tasks.mteb_tasks import (SAMPLE_SEED, describe_task, load_task, probe_tasks,
                              require_subsamplable,
                              resolve_task_names)

FINGERPRINT_FILE = "fingerprint.json"
ITEMS_DIR = "items"  # per subsampled task: what its score is computed from (tasks/bootstrap.py)


def packaged_instructions() -> dict[str, str]:
    return yaml.safe_load((CONFIG_DIR / STAGE / "instructions.yaml").read_text())


def _evaluation_model(config: EvaluateConfig):
    from tasks.artifact import read_layercut_file
    from tasks.evaluation_task import CorpusSplit, EvaluationModel
    from tasks.prompts import PromptConfig

    source = resolve_model(config.model.name_or_path)
    revision = f"layers-{config.layers.slug}" if config.layers is not None else "full"
    if config.max_samples_per_split:  # results of a subsample never pass for the full task's
        revision += f"-sample{config.max_samples_per_split}"
    corpus = None
    if config.corpus_workers > 1:
        plan = plan_workers(config.workers, config.corpus_workers)
        corpus = CorpusSplit(workers=config.corpus_workers, min_texts=config.corpus_min_texts,
                             use_gpu=plan.use_gpu, cpus_per_worker=plan.cpus)
    prompt, pooling = config.encoder.prompt(), config.encoder.pooling
    artifact = read_layercut_file(source.path) if source.is_local else None
    if artifact is not None and artifact.get("objective", "contrastive") != "contrastive":
        raise LayercutError(f"{config.model.name_or_path} is a prompt-based classifier "
                            "(classification objective); score it with `layercut evaluate-classifier`")
    if artifact is not None:
        # A fine-tuned artifact was trained with its own input format and pooling: use them.
        prompt, pooling = PromptConfig(**artifact["prompt"]), artifact["pooling"]
    model = EvaluationModel(
        name=f"layercut/{config.model.slug()}", revision=revision, spec=config.model.spec(source, config.layers),
        prompt=prompt, pooling=pooling,
        batch_size=config.encoder.forward_batch_size or 32,
        instructions={**packaged_instructions(), **config.instructions}, corpus=corpus)
    if not model.is_sentence_transformer:
        # Render the wrapper once, here: a prompt setup the template cannot serve (a system
        # prompt it drops) fails before anything is recorded, and every worker uses this one.
        from dataclasses import replace

        from tasks.prompts import PromptFormatter

        model = replace(model, prompt=PromptFormatter(model.spec.load_tokenizer(), prompt).recorded())
    return model


def _model_facts(model) -> dict[str, Any]:
    """Parameters and layers of what is evaluated, from its config (no weights loaded)."""
    from tasks.models import parameters_per_depth
    from tasks.pruning import resolve_selection

    if model.is_sentence_transformer:
        return {"parameters": None, "layers": None, "layers_total": None}
    total, counts = parameters_per_depth(model.spec.source, revision=model.spec.revision,
                                         trust_remote_code=model.spec.trust_remote_code)
    kept = resolve_selection(total if model.spec.layers is None else model.spec.layers, total)
    return {"parameters": kept.parameters(counts), "layers": kept.count, "layers_total": total}


def check_tasks(config: EvaluateConfig) -> list[str]:
    """The task names, checked before any model loads: known to mteb, present in the mirror in
    the right layout, subsamplable when asked."""
    names = resolve_task_names(config.tasks)
    unknown = sorted((set(config.task_splits) | set(config.task_subsets)) - set(names))
    if unknown:
        raise LayercutError(f"task_splits / task_subsets name tasks that are not evaluated: {', '.join(unknown)}")
    for name in names:
        task = load_task(name, config.data_root, config.task_selection())
        if config.max_samples_per_split:
            require_subsamplable(task)
    return names


def list_tasks(config: EvaluateConfig) -> str:
    """`layercut evaluate --tasks ... --list`: one line per task (name, type, the splits and
    subsets scored), from mteb's registry; no model or data is loaded."""
    names = resolve_task_names(config.tasks)
    return "\n".join(describe_task(load_task(name, None, config.task_selection())) for name in names)


def settings_fingerprint(config: EvaluateConfig, model) -> dict[str, Any]:
    """What decides every score of a run: the model's content, depth and dtype, the input format,
    pooling and subsample (not where, on how many workers or in what batch size it runs)."""
    sample = config.max_samples_per_split
    return {"model": model_identity(model.spec.source, config.model.revision),
            "layers": config.model_dump(mode="json", include={"layers"})["layers"], "dtype": config.model.dtype,
            "prompt": asdict(model.prompt), "pooling": model.pooling,
            "subsample": {"max_samples_per_split": sample, "seed": SAMPLE_SEED} if sample else None}


def task_inputs(config: EvaluateConfig, model, names: list[str]) -> dict[str, dict[str, Any]]:
    """What decides one task's score besides the settings: its instruction, data (the mirror
    folder or hub dataset and revision), subsets and evaluation splits."""
    inputs = {}
    for name in names:
        task = load_task(name, config.data_root, config.task_selection())
        instruction = None if model.is_sentence_transformer else model.instructions.get(name)
        inputs[name] = {"instruction": instruction, "dataset": dict(task.metadata.dataset),
                        "subsets": list(task.hf_subsets), "splits": list(task.eval_splits)}
    return inputs


def guard_results(run_dir: Path, settings: dict[str, Any], tasks: dict[str, dict[str, Any]],
                  finished: list[str]) -> None:
    """Refuse (LayercutError) to reuse results of other settings or task inputs, then record
    ``settings`` and ``tasks`` in run_dir/fingerprint.json (before any task runs, so every
    result in the directory has its record). A directory with no results guards nothing.

    Raises when results exist and the record is missing or holds other settings, or when a
    finished task's recorded inputs differ from ``tasks``."""
    path = run_dir / FINGERPRINT_FILE
    record = json.loads(path.read_text()) if path.exists() else None
    has_results = bool(finished) or any((run_dir / "results").rglob("*.json"))
    fix = f"use another --name (or none: each model and setting gets its own directory) or delete {run_dir}"
    if has_results and record is None:
        raise LayercutError(f"run directory {run_dir} holds results without a fingerprint of "
                            f"what computed them; {fix}")
    if record is not None and has_results and record["settings"] != settings:
        raise LayercutError(
            f"run directory {run_dir} holds results of another model or settings (fingerprint "
            f"{record['fingerprint']}, here {digest(settings)}: "
            f"{describe_difference(record['settings'], settings)}); {fix}")
    recorded = record["tasks"] if record is not None and record["settings"] == settings else {}
    for name in finished:
        if recorded.get(name) != tasks[name]:
            raise LayercutError(
                f"the result of {name} in {run_dir} was computed with other task inputs "
                f"({describe_difference(recorded.get(name) or {}, tasks[name])}); {fix}")
    write_json(path, {"fingerprint": digest(settings), "settings": settings,
                      "tasks": {**recorded, **tasks}})


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate (or resume) and write the run's outputs; returns the summary, with ``run_dir``,
    ``fingerprint`` and ``items`` (per task, the evaluated items of a subsampled run; else None). Raises LayercutError on bad input or results of other inputs."""
    import mteb

    names = check_tasks(config)
    model = _evaluation_model(config)
    facts = _model_facts(model)
    settings = settings_fingerprint(config, model)
    tasks = task_inputs(config, model, names)
    run_dir = config.run_dir(digest(settings))
    cache = mteb.ResultCache(cache_path=run_dir)
    meta = model_meta(model.name, model.revision)

    def result_path(name: str) -> Path:
        return cache.get_task_result_path(name, meta.name, meta.revision)

    finished = [name for name in names if result_path(name).exists()]
    guard_results(run_dir, settings, tasks, finished)
    write_atomic(run_dir / "config.yaml", dump_config(config))
    for name in finished:
        score = mteb.TaskResult.from_disk(result_path(name)).get_score()
        log(f"{name}: main score {score:.4f}, reused from {run_dir} "
            "(same model, settings and task inputs)")
    pending = [name for name in names if name not in finished]
    # Encode throughput per task, kept beside the results: a resumed run's summary still
    # covers the tasks an earlier invocation ran.
    throughput_path = run_dir / "throughput.json"
    throughput = json.loads(throughput_path.read_text()) if throughput_path.exists() else {}
    for outcome in _evaluate_tasks(config, model, pending):
        if outcome.get("items"):  # a subsampled task's items, for its bootstrap interval
            write_json(run_dir / ITEMS_DIR / f"{outcome['task']}.json", outcome["items"])
        cache.save_to_cache(outcome["result"], meta)
        throughput[outcome["task"]] = [outcome["texts"], outcome["encode_seconds"]]
        write_json(throughput_path, throughput)
    results = {name: mteb.TaskResult.from_disk(result_path(name)) for name in names}
    items = _load_items(run_dir, names) if config.max_samples_per_split else None
    summary = _summary(results, facts, {name: throughput[name] for name in names if name in throughput}, items)
    summary.update(run_dir=str(run_dir), fingerprint=digest(settings), model_identity=settings["model"])
    _write_summary(run_dir, model, summary)
    # Per subsampled task, what its score was computed from (None: tasks run in full): a caller
    # comparing two models on the same items pairs their resamples (tasks/bootstrap.py).
    summary["items"] = items
    return summary


def log(line: str) -> None:
    print(f"layercut: {line}", file=sys.stderr, flush=True)


def _evaluate_tasks(config: EvaluateConfig, model, pending: list[str]):
    """Each pending task's outcome as it finishes: in this process, in one Ray task (one worker:
    a pooled worker process, warm when an earlier evaluation used it), or over a pool of actors
    that each load the model once."""
    from tasks.evaluation_task import EvaluationWorker, evaluate_in_turn

    if not pending:
        return
    workers = config.workers
    if workers.executor == "local":
        yield from evaluate_in_turn(model, config.data_root, pending,
                                    max_samples_per_split=config.max_samples_per_split,
                                    selection=config.task_selection(), show_progress=config.show_progress)
        return
    plan = plan_workers(workers, len(pending))
    if plan.count == 1:  # a pooled worker, warm when an earlier evaluation used it (on CPU)
        yield from stream_in_one_task(evaluate_in_turn, plan, model, config.data_root, pending, plan.threads,
                                      config.max_samples_per_split, config.task_selection(),
                                      config.show_progress)
        return
    from ray.util import ActorPool

    actor = EvaluationWorker.options(**plan.resources)
    pool = ActorPool([actor.remote(model, config.data_root, plan.threads, config.max_samples_per_split,
                                   config.task_selection(), config.show_progress)
                      for _ in range(plan.count)])
    with user_errors_from_ray():
        yield from pool.map_unordered(lambda worker, name: worker.evaluate.remote(name), pending)


def _load_items(run_dir: Path, names: list[str]) -> dict[str, Any]:
    paths = {name: run_dir / ITEMS_DIR / f"{name}.json" for name in names}
    return {name: json.loads(path.read_text()) if path.exists() else None for name, path in paths.items()}


def _summary(results, facts, throughput, items: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scores per task, per type and overall. With ``items`` (a subsampled run), every row's
    ``interval`` and the ``mean_interval`` are bootstrap 95% intervals (tasks/bootstrap.py;
    None where a task's items are missing); without, both are None and nothing is resampled."""
    rows = []
    by_type: dict[str, list[float]] = defaultdict(list)
    for name, result in results.items():
        score = float(result.get_score())
        # mteb looks a result's type up in its registry, which does not hold layercut's probes.
        task_type = "Classification" if name in probe_tasks() else result.task_type
        # What was scored: the result's own splits and subsets (mteb's get_score averages them).
        splits = sorted(result.scores)
        subsets = sorted({entry["hf_subset"] for split in result.scores.values() for entry in split})
        rows.append({"task": name, "type": task_type, "main_score": score, "splits": splits,
                     "subsets": subsets})
        by_type[task_type].append(score)
    texts = sum(t for t, _ in throughput.values())
    seconds = sum(s for _, s in throughput.values())
    per_task, mean_interval, bootstrap = {}, None, None
    if items is not None:
        from tasks.bootstrap import LEVEL, RESAMPLES, SEED, intervals

        per_task, mean_interval = intervals({row["task"]: items.get(row["task"]) for row in rows})
        bootstrap = {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL,
                     "resampled": "the evaluated pairs / test texts of each subsampled split"}
    for row in rows:
        row["interval"] = per_task.get(row["task"])
    return {
        "tasks": rows,
        "mean_per_type": {t: sum(v) / len(v) for t, v in by_type.items()},
        "mean": sum(r["main_score"] for r in rows) / len(rows),
        "mean_interval": mean_interval,
        "bootstrap": bootstrap,
        **facts,
        "texts_per_second": texts / seconds if seconds else None,
    }


def _interval_text(interval) -> str:
    return "" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _write_summary(run_dir: Path, model, summary: dict[str, Any]) -> None:
    write_csv(run_dir / "summary.csv", ["task", "type", "main_score", "splits", "subsets",
                                        "ci95_low", "ci95_high"],
              [[r["task"], r["type"], f"{r['main_score']:.6f}", " ".join(r["splits"]), " ".join(r["subsets"]),
                *([f"{v:.6f}" for v in r["interval"]] if r["interval"] else ["", ""])]
               for r in summary["tasks"]])
    lines = [f"# MTEB evaluation of {model.name} ({model.revision})", "",
             f"Fingerprint: {summary['fingerprint']} (model {summary['model_identity']})"]
    if summary["layers"] is not None:
        lines.append(f"Layers: {summary['layers']} of {summary['layers_total']}; "
                     f"parameters: {summary['parameters']:,}")
    if summary["texts_per_second"]:
        lines.append(f"Encode throughput: {summary['texts_per_second']:.1f} texts/s")
    bootstrap = summary["bootstrap"]
    if bootstrap:
        lines += ["", f"Subsampled tasks: 95% bootstrap intervals from {bootstrap['resamples']} "
                  f"resamples of the evaluated items (seed {bootstrap['seed']})."]
    lines += ["", "| task | type | main score | 95% interval | splits | subsets |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['type']} | {r['main_score']:.4f} | {_interval_text(r['interval']) or 'n/a'} "
              f"| {', '.join(r['splits'])} | {', '.join(r['subsets'])} |" for r in summary["tasks"]]
    lines += ["", "| task type | mean |", "|---|---|"]
    lines += [f"| {t} | {m:.4f} |" for t, m in summary["mean_per_type"].items()]
    interval = _interval_text(summary["mean_interval"])
    lines += ["", f"**Overall mean: {summary['mean']:.4f}**" + (f" (95% interval {interval})" if interval else ""), ""]
    write_atomic(run_dir / "summary.md", "\n".join(lines))


def render(config: EvaluateConfig, summary: dict[str, Any]) -> int:
    run_dir = Path(summary["run_dir"])
    print((run_dir / "summary.md").read_text())
    print(f"mteb result files in {run_dir / 'results'}")
    return 0


# `layercut evaluate` (registered in pipelines/cli.py); --list previews the tasks
ENTRY = Stage(EvaluateConfig, STAGE, run, render, preview=list_tasks)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut evaluate` runs.
    from pipelines import evaluate

    sys.exit(run_as_script("evaluate", evaluate.ENTRY))

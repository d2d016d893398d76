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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from pipelines.commands import Stage, run_as_script
from pipelines.config import CONFIG_DIR
from pipelines.fingerprints import describe_difference, digest
from pipelines.ray_runtime import plan_workers, stream_in_one_task, user_errors_from_ray
from pipelines.results import EvaluateResult
from pipelines.route_names import CONTRASTIVE
from pipelines.routes.artifacts import refuse_other_routes
from pipelines.run_store.guard import Refusal, check
from pipelines.run_store.items import ItemStore
from pipelines.run_store.run import RunStore
from pipelines.schemas.evaluate import STAGE, EvaluateConfig
from tasks.errors import LayercutError
from tasks.evaluation.mteb_model import model_meta
from tasks.evaluation.mteb_tasks import (SAMPLE_SEED, describe_task, load_task, probe_tasks,
                              require_subsamplable,
                              resolve_task_names)
from tasks.model.model_identity import model_identity
from tasks.model.models import resolve_model

FINGERPRINT_FILE = "fingerprint.json"
THROUGHPUT_FILE = "throughput.json"
ITEMS_DIR = "items"  # per subsampled task: what its score is computed from (tasks/evaluation/bootstrap.py)


def packaged_instructions() -> dict[str, str]:
    return yaml.safe_load((CONFIG_DIR / STAGE / "instructions.yaml").read_text())


def _evaluation_model(config: EvaluateConfig):
    from tasks.evaluation.evaluation_task import CorpusSplit, EvaluationModel
    from tasks.export.artifact import read_layercut_file
    from tasks.model.prompts import PromptConfig

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
    refuse_other_routes(config.model.name_or_path, artifact, CONTRASTIVE)  # MTEB scores embeddings
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

        from tasks.model.prompts import PromptFormatter

        model = replace(model, prompt=PromptFormatter(model.spec.load_tokenizer(), prompt).recorded())
    return model


def _model_facts(model) -> dict[str, Any]:
    """Parameters and layers of what is evaluated, from its config (no weights loaded)."""
    from tasks.model.models import parameters_per_depth
    from tasks.model.pruning import resolve_selection

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


def evaluation_run_dir(config: EvaluateConfig, fingerprint: str) -> Path:
    """``config.run_dir`` of the run with ``fingerprint``; a fine-tuned artifact's base model and
    depth (its layercut.json, read here: the config itself reads nothing) name the default."""
    from tasks.export.artifact import read_layercut_file
    from tasks.object_store import is_uri

    name = config.model.name_or_path  # a URI's directory: its local copy (fetched already)
    path = Path(resolve_model(name).path if is_uri(name) else name).expanduser()
    artifact = read_layercut_file(path) if config.name is None and path.is_dir() else None
    return config.run_dir(fingerprint, artifact)


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


# A named directory holding results of other inputs is refused; by default each model and
# setting gets its own directory.
REFUSAL = Refusal("results", "of another model or settings",
                  "use another --name (or none: each model and setting gets its own directory) or delete")


def guard_results(store: RunStore, settings: dict[str, Any], tasks: dict[str, dict[str, Any]],
                  finished: list[str]) -> None:
    """Refuse (LayercutError) to reuse results of other settings or task inputs, then record
    ``settings`` and ``tasks`` in the run dir's fingerprint.json (before any task runs, so every
    result in the directory has its record). A directory with no results guards nothing.

    Raises when results exist and the record is missing or holds other settings, or when a
    finished task's recorded inputs differ from ``tasks``."""
    guard = store.guard(FINGERPRINT_FILE)
    refusal = replace(REFUSAL, fix=f"{REFUSAL.fix} {store}")
    has_results = bool(finished) or any(name.endswith(".json") for name in store.files.tree("results"))
    record = guard.recorded()  # read once: the check and the finished tasks' inputs both use it
    check(store.files, record, settings, has_results=has_results, refusal=refusal)
    same = record is not None and record.fingerprint == digest(settings)
    recorded = (record.extra.get("tasks") or {}) if same else {}
    for name in finished:
        if recorded.get(name) != tasks[name]:
            raise LayercutError(
                f"the result of {name} in {store} was computed with other task inputs "
                f"({describe_difference(recorded.get(name) or {}, tasks[name])}); {refusal.fix}")
    guard.record(settings, tasks={**recorded, **tasks})


def run(config: EvaluateConfig) -> EvaluateResult:
    """Evaluate (or resume) and write the run's outputs; returns the result, with ``run_dir``,
    ``fingerprint`` and ``items`` (per task, the evaluated items of a subsampled run; else None).
    Raises LayercutError on bad input or results of other inputs."""
    names = check_tasks(config)
    model = _evaluation_model(config)
    facts = _model_facts(model)
    settings = settings_fingerprint(config, model)
    tasks = task_inputs(config, model, names)
    store = RunStore(evaluation_run_dir(config, digest(settings))).create()
    results_store = _TaskResults(store, model_meta(model.name, model.revision))
    finished = results_store.done(names)
    guard_results(store, settings, tasks, finished)
    store.record_config(config)
    for name in finished:
        score = results_store.load(name).get_score()
        log(f"{name}: main score {score:.4f}, reused from {store} "
            "(same model, settings and task inputs)")
    pending = [name for name in names if name not in finished]
    # Encode throughput per task, kept beside the results: a resumed run's summary still
    # covers the tasks an earlier invocation ran.
    throughput = store.files.read_json(THROUGHPUT_FILE) if store.files.exists(THROUGHPUT_FILE) else {}
    items = store.items(ITEMS_DIR)
    for outcome in _evaluate_tasks(config, model, pending):
        if outcome.get("items"):  # a subsampled task's items, for its bootstrap interval
            items.save(outcome["task"], outcome["items"])
        results_store.save(outcome["result"])
        throughput[outcome["task"]] = [outcome["texts"], outcome["encode_seconds"]]
        store.files.write_json(THROUGHPUT_FILE, throughput)
    results = {name: results_store.load(name) for name in names}
    evaluated = _load_items(items, names) if config.max_samples_per_split else None
    scores = _summary(results, facts, {name: throughput[name] for name in names if name in throughput}, evaluated)
    # items: per subsampled task, what its score was computed from (None: tasks run in full): a
    # caller comparing two models on the same items pairs their resamples (tasks/evaluation/bootstrap.py).
    summary = EvaluateResult(**scores, run_dir=str(store.root), fingerprint=digest(settings),
                             model_identity=settings["model"], items=evaluated)
    _write_summary(store, model, summary)
    return summary


class _TaskResults:
    """Finished tasks' mteb results, in mteb's own layout (results/<model>/<revision>/<task>.json
    beside model_meta.json and run_settings.jsonl, which mteb's tooling reads).

    mteb reads and writes its cache on a local path; here it writes into a local scratch cache
    and each file then replaces its counterpart in the run directory whole (a local folder or an
    object store), the task's result last: a result file exists only complete, so a crash
    mid-write leaves the task pending, never a half-written score."""

    def __init__(self, store: RunStore, meta):
        self.store, self.meta = store, meta

    def name(self, task: str) -> str:
        """The run-relative name of ``task``'s result file, as mteb's cache lays it out."""
        import tempfile

        import mteb

        with tempfile.TemporaryDirectory(prefix="layercut-mteb-") as scratch:
            path = mteb.ResultCache(cache_path=scratch).get_task_result_path(task, self.meta.name,
                                                                             self.meta.revision)
            return Path(path).relative_to(scratch).as_posix()

    def done(self, names: list[str]) -> list[str]:
        return [name for name in names if self.store.files.exists(self.name(name))]

    def load(self, task: str):
        """``task``'s result, read by mteb's own loader from a local copy (the run directory
        may be an object store)."""
        import tempfile

        import mteb

        with tempfile.TemporaryDirectory(prefix="layercut-mteb-") as scratch:
            local = Path(scratch) / f"{task}.json"
            local.write_bytes(self.store.files.read_bytes(self.name(task)))
            return mteb.TaskResult.from_disk(local)

    def save(self, result) -> None:
        import tempfile

        import mteb

        files = self.store.files
        with tempfile.TemporaryDirectory(prefix="layercut-mteb-") as scratch:
            mteb.ResultCache(cache_path=scratch).save_to_cache(result, self.meta)
            written = sorted(Path(scratch).rglob("*"))
            target = self.name(result.task_name)
            for path in [p for p in written if p.is_file()]:
                name = path.relative_to(scratch).as_posix()
                if name == target:
                    continue
                data = path.read_text()
                if path.name == "run_settings.jsonl" and files.exists(name):
                    # mteb merges one line per (task, split) into the file: keep other tasks' lines.
                    kept = [line for line in files.read_text(name).splitlines()
                            if line.strip() and json.loads(line).get("task") != result.task_name]
                    data = "".join(f"{line}\n" for line in kept) + data
                files.write_text(name, data)
            files.write_text(target, (Path(scratch) / target).read_bytes())


def log(line: str) -> None:
    print(f"layercut: {line}", file=sys.stderr, flush=True)


def _evaluate_tasks(config: EvaluateConfig, model, pending: list[str]):
    """Each pending task's outcome as it finishes: in this process, in one Ray task (one worker:
    a pooled worker process, warm when an earlier evaluation used it), or over a pool of actors
    that each load the model once."""
    from tasks.evaluation.evaluation_task import EvaluationWorker, evaluate_in_turn

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


def _load_items(items: ItemStore, names: list[str]) -> dict[str, Any]:
    return {name: items.load(name) if items.has(name) else None for name in names}


def _summary(results, facts, throughput, items: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scores per task, per type and overall. With ``items`` (a subsampled run), every row's
    ``interval`` and the ``mean_interval`` are bootstrap 95% intervals (tasks/evaluation/bootstrap.py;
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
        from tasks.evaluation.bootstrap import LEVEL, RESAMPLES, SEED, intervals

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


def _write_summary(store: RunStore, model, summary: EvaluateResult) -> None:
    store.files.write_csv("summary.csv", ["task", "type", "main_score", "splits", "subsets",
                                        "ci95_low", "ci95_high"],
              [[r["task"], r["type"], f"{r['main_score']:.6f}", " ".join(r["splits"]), " ".join(r["subsets"]),
                *([f"{v:.6f}" for v in r["interval"]] if r["interval"] else ["", ""])]
               for r in summary.tasks])
    lines = [f"# MTEB evaluation of {model.name} ({model.revision})", "",
             f"Fingerprint: {summary.fingerprint} (model {summary.model_identity})"]
    if summary.layers is not None:
        lines.append(f"Layers: {summary.layers} of {summary.layers_total}; "
                     f"parameters: {summary.parameters:,}")
    if summary.texts_per_second:
        lines.append(f"Encode throughput: {summary.texts_per_second:.1f} texts/s")
    bootstrap = summary.bootstrap
    if bootstrap:
        lines += ["", f"Subsampled tasks: 95% bootstrap intervals from {bootstrap['resamples']} "
                  f"resamples of the evaluated items (seed {bootstrap['seed']})."]
    lines += ["", "| task | type | main score | 95% interval | splits | subsets |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['type']} | {r['main_score']:.4f} | {_interval_text(r['interval']) or 'n/a'} "
              f"| {', '.join(r['splits'])} | {', '.join(r['subsets'])} |" for r in summary.tasks]
    lines += ["", "| task type | mean |", "|---|---|"]
    lines += [f"| {t} | {m:.4f} |" for t, m in summary.mean_per_type.items()]
    interval = _interval_text(summary.mean_interval)
    lines += ["", f"**Overall mean: {summary.mean:.4f}**" + (f" (95% interval {interval})" if interval else ""), ""]
    store.files.write_text("summary.md", "\n".join(lines))


def render(config: EvaluateConfig, summary: EvaluateResult) -> int:
    files = RunStore(summary.run_dir).files
    print(files.read_text("summary.md"))
    print(f"mteb result files in {files.where('results')}")
    return 0


# `layercut evaluate` (registered in pipelines/cli.py); --list previews the tasks
ENTRY = Stage(EvaluateConfig, STAGE, run, render, preview=list_tasks)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut evaluate` runs.
    from pipelines import evaluate

    sys.exit(run_as_script("evaluate", evaluate.ENTRY))

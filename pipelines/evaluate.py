"""Stage 3: MTEB evaluation with mteb's own tasks and evaluators, spread over Ray workers.

    layercut evaluate --model <artifact dir | hub id | built-in> --tasks quick [--layers N]
    python -m pipelines.evaluate --model smollm2-135m --layers 8 --tasks STSBenchmark

Each worker (a Ray actor; one GPU each on a cluster) loads the model once and runs whole tasks.
Results: mteb's own per-task JSON files under results/ (mteb's tooling reads them), and a
summary (summary.md, summary.csv): main score per task, mean per task type, overall mean,
parameters, layers and encode throughput. Finished tasks are not run again.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from pipelines.config import CONFIG_DIR, StrictModel, dump_config
from pipelines.outputs import write_atomic, write_csv, write_json
from pipelines.ray_runtime import plan_workers, user_errors_from_ray
from pipelines.sections import EncoderSection, ModelSection, WorkersSection
from tasks.errors import LayercutError
from tasks.models import resolve_model
from tasks.mteb_model import model_meta
from tasks.mteb_tasks import load_task, probe_tasks, require_subsamplable, resolve_task_names

STAGE = "evaluate"


class EvaluateConfig(StrictModel):
    name: str | None = None  # run name; default: eval-<model>[-<layers>l]
    output_dir: str = "runs"
    model: ModelSection = Field(default_factory=ModelSection)
    layers: int | float | None = None  # evaluate the model cut to this depth (count or fraction)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    tasks: list[str] = Field(default_factory=lambda: ["quick"])  # mteb names or presets
    data_root: str | None = None  # a local mirror in the hub layout: <data_root>/<task name>/
    instructions: dict[str, str] = Field(default_factory=dict)  # overrides of the packaged table
    # One large input set (a retrieval corpus) of at least corpus_min_texts texts is encoded by
    # corpus_workers Ray Data actors (a GPU each on a cluster) instead of its task's worker alone.
    corpus_workers: int = Field(1, ge=1)
    corpus_min_texts: int = Field(20000, ge=1)
    # Quick runs: score STS and classification tasks on a seeded random subset of this many rows
    # per evaluation split (mteb's own evaluator on fewer examples; not leaderboard-comparable).
    max_samples_per_split: int | None = Field(None, ge=2)
    workers: WorkersSection = Field(default_factory=WorkersSection)

    def run_dir(self) -> Path:
        depth = f"-{self.layers}l" if self.layers is not None else ""
        return Path(self.output_dir) / (self.name or f"eval-{self.model.slug()}{depth}")


def packaged_instructions() -> dict[str, str]:
    return yaml.safe_load((CONFIG_DIR / STAGE / "instructions.yaml").read_text())


def _evaluation_model(config: EvaluateConfig):
    from tasks.artifact import read_layercut_file
    from tasks.evaluation_task import CorpusSplit, EvaluationModel
    from tasks.prompts import PromptConfig

    source = resolve_model(config.model.name_or_path)
    revision = f"layers-{config.layers}" if config.layers is not None else "full"
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
    from tasks.pruning import resolve_depth

    if model.is_sentence_transformer:
        return {"parameters": None, "layers": None, "layers_total": None}
    total, counts = parameters_per_depth(model.spec.source, revision=model.spec.revision,
                                         trust_remote_code=model.spec.trust_remote_code)
    kept = total if model.spec.layers is None else resolve_depth(model.spec.layers, total)
    return {"parameters": counts[kept], "layers": kept, "layers_total": total}


def check_tasks(config: EvaluateConfig) -> list[str]:
    """The task names, checked before any model loads: known to mteb, present in the mirror in
    the right layout, subsamplable when asked."""
    names = resolve_task_names(config.tasks)
    for name in names:
        task = load_task(name, config.data_root)
        if config.max_samples_per_split:
            require_subsamplable(task)
    return names


def run(config: EvaluateConfig) -> dict[str, Any]:
    import mteb

    names = check_tasks(config)
    model = _evaluation_model(config)
    facts = _model_facts(model)
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_config(config))
    cache = mteb.ResultCache(cache_path=run_dir)
    meta = model_meta(model.name, model.revision)

    def result_path(name: str) -> Path:
        return cache.get_task_result_path(name, meta.name, meta.revision)

    pending = [name for name in names if not result_path(name).exists()]
    # Encode throughput per task, kept beside the results: a resumed run's summary still
    # covers the tasks an earlier invocation ran.
    throughput_path = run_dir / "throughput.json"
    throughput = json.loads(throughput_path.read_text()) if throughput_path.exists() else {}
    for outcome in _evaluate_tasks(config, model, pending):
        cache.save_to_cache(outcome["result"], meta)
        throughput[outcome["task"]] = [outcome["texts"], outcome["encode_seconds"]]
        write_json(throughput_path, throughput)
    results = {name: mteb.TaskResult.from_disk(result_path(name)) for name in names}
    summary = _summary(results, facts, {name: throughput[name] for name in names if name in throughput})
    _write_summary(run_dir, model, summary)
    return summary


def _evaluate_tasks(config: EvaluateConfig, model, pending: list[str]):
    from tasks.evaluation_task import Evaluator, EvaluationWorker

    if not pending:
        return
    workers = config.workers
    if workers.executor == "local":
        evaluator = Evaluator(model, config.data_root,
                              max_samples_per_split=config.max_samples_per_split)
        for name in pending:
            yield evaluator.evaluate(name)
        return
    from ray.util import ActorPool

    plan = plan_workers(workers, len(pending))
    actor = EvaluationWorker.options(**plan.resources)
    pool = ActorPool([actor.remote(model, config.data_root, plan.threads, config.max_samples_per_split)
                      for _ in range(plan.count)])
    with user_errors_from_ray():
        yield from pool.map_unordered(lambda worker, name: worker.evaluate.remote(name), pending)


def _summary(results, facts, throughput) -> dict[str, Any]:
    rows = []
    by_type: dict[str, list[float]] = defaultdict(list)
    for name, result in results.items():
        score = float(result.get_score())
        # mteb looks a result's type up in its registry, which does not hold layercut's probes.
        task_type = "Classification" if name in probe_tasks() else result.task_type
        rows.append({"task": name, "type": task_type, "main_score": score})
        by_type[task_type].append(score)
    texts = sum(t for t, _ in throughput.values())
    seconds = sum(s for _, s in throughput.values())
    return {
        "tasks": rows,
        "mean_per_type": {t: sum(v) / len(v) for t, v in by_type.items()},
        "mean": sum(r["main_score"] for r in rows) / len(rows),
        **facts,
        "texts_per_second": texts / seconds if seconds else None,
    }


def _write_summary(run_dir: Path, model, summary: dict[str, Any]) -> None:
    write_csv(run_dir / "summary.csv", ["task", "type", "main_score"],
              [[r["task"], r["type"], f"{r['main_score']:.6f}"] for r in summary["tasks"]])
    lines = [f"# MTEB evaluation of {model.name} ({model.revision})", ""]
    if summary["layers"] is not None:
        lines.append(f"Layers: {summary['layers']} of {summary['layers_total']}; "
                     f"parameters: {summary['parameters']:,}")
    if summary["texts_per_second"]:
        lines.append(f"Encode throughput: {summary['texts_per_second']:.1f} texts/s")
    lines += ["", "| task | type | main score |", "|---|---|---|"]
    lines += [f"| {r['task']} | {r['type']} | {r['main_score']:.4f} |" for r in summary["tasks"]]
    lines += ["", "| task type | mean |", "|---|---|"]
    lines += [f"| {t} | {m:.4f} |" for t, m in summary["mean_per_type"].items()]
    lines += ["", f"**Overall mean: {summary['mean']:.4f}**", ""]
    write_atomic(run_dir / "summary.md", "\n".join(lines))


if __name__ == "__main__":
    from pipelines.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))

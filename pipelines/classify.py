"""Stage 3 for the classification objective: accuracy and macro-F1 on a test split, on Ray.

    layercut evaluate-classifier --model runs/finetune-smollm2-135m-sst2-l4/model
    layercut evaluate-classifier --model smollm2-135m --layers 4 classification.dataset=trec

A prompt-tuned artifact (stage 2 with ``objective: classification``) brings its own template,
labels and verbalizers; any other causal LM (a base model, optionally cut with ``--layers``) is
scored zero-shot with the config's. The test rows are cut into chunks that Ray workers (one per
GPU on a cluster, CPU slots locally; one worker is a streaming task, several a pool of actors)
score, each loading the model once; every chunk's
scores are saved as they arrive, so a rerun only scores what is missing.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import resolve
from pipelines.commands import Stage, run_as_script
from pipelines.fingerprints import digest
from pipelines.ray_runtime import ensure_ray, plan_workers, stream_in_one_task, user_errors_from_ray
from pipelines.results import ClassifyResult
from pipelines.route_names import CLASSIFICATION
from pipelines.routes.artifacts import refuse_other_routes
from pipelines.run_store.items import NPZ
from pipelines.run_store.run import RunStore
from pipelines.schemas.classify import STAGE, ClassifyConfig
from tasks.classification.classification_eval import ClassifierWorker, score_in_turn
from tasks.errors import LayercutError

def _prompt_and_labels(config: ClassifyConfig, source) -> tuple[Any, bool, dict | None]:
    """(ClassificationPrompt, zero_shot, artifact facts): a prompt-tuned artifact's own prompt,
    else the config's."""
    from tasks.classification.verbalizer import ClassificationPrompt
    from tasks.export.artifact import read_layercut_file

    artifact = read_layercut_file(source.path) if source.is_local else None
    refuse_other_routes(config.model.name_or_path, artifact, CLASSIFICATION)  # a classifier's prompt
    data_labels = resolve.label_names(config.classification)
    if artifact is None:
        return config.classification.prompt(data_labels), True, None
    task = artifact["classification"]
    if list(task["label_names"]) != list(data_labels):
        raise LayercutError(f"the model classifies into {task['label_names']} (trained on "
                            f"{task.get('dataset')}) but the data's labels are {data_labels}; "
                            f"set classification.dataset={task.get('dataset')}")
    if config.layers is not None:
        raise LayercutError("--layers cuts a base model; a fine-tuned artifact keeps its depth")
    prompt = ClassificationPrompt(task["template"], tuple(task["label_names"]),
                                  tuple(tuple(w) for w in task["verbalizers"]), task["max_length"])
    return prompt, False, artifact


def _settings(config: ClassifyConfig, model_path: str, prompt, data_path: str) -> dict[str, Any]:
    """What decides the scores (its digest keys the chunk store and the finished summary)."""
    return {"model": [model_path, config.model.revision, config.model.dtype,
                      None if config.layers is None else str(config.layers)],
            "prompt": [prompt.template, prompt.label_names, prompt.verbalizers, prompt.max_length],
            "data": [data_path, config.max_test_rows, config.seed, config.chunk_size]}


def _test_rows(config: ClassifyConfig, label_names: list[str]) -> tuple[list[dict], str]:
    from tasks.training.classification_data import annotated_labeled, valid_rows

    task = config.classification
    path, columns = task.split_path(task.test_split)
    annotated, report = annotated_labeled(path, label_names=label_names, columns=columns,
                                          seed=config.seed, invalid_rows=task.invalid_rows)
    if report["skipped_rows"]:
        print(f"layercut: skipped {report['skipped_rows']} of {report['rows']} test rows without "
              f"usable text; first: {report['first_problem']}", file=sys.stderr)
    rows = valid_rows(annotated)  # key order: a seeded shuffle
    return (rows[:config.max_test_rows] if config.max_test_rows else rows), path


def _score_chunks(config: ClassifyConfig, spec, prompt, chunks: list[list[str]], pending: list[int]):
    """Yield (chunk index, scores, seconds) for the pending chunks, as they finish."""
    if not pending:
        return
    todo = {index: chunks[index] for index in pending}
    if config.workers.executor == "local":
        yield from score_in_turn(spec, prompt, config.batch_size, todo)
        return
    import ray
    from ray.util import ActorPool

    plan = plan_workers(config.workers, len(pending))
    if plan.count == 1:  # a pooled worker, warm when an earlier scoring used it (on CPU)
        yield from stream_in_one_task(score_in_turn, plan, spec, prompt, config.batch_size, todo, plan.threads)
        return
    actor = ray.remote(ClassifierWorker).options(**plan.resources)
    pool = ActorPool([actor.remote(spec, prompt, config.batch_size, plan.threads)
                      for _ in range(plan.count)])
    with user_errors_from_ray():
        yield from pool.map_unordered(lambda w, i: w.score.remote(i, chunks[i]), pending)


def run(config: ClassifyConfig) -> ClassifyResult:
    """Score (or resume) and write the run's outputs; returns its result (summary.json's record)."""
    from tasks.classification.classification_eval import classification_metrics
    from tasks.model.models import parameters_per_depth, resolve_model
    from tasks.model.pruning import resolve_selection

    source = resolve_model(config.model.name_or_path)
    ensure_ray(config.workers.address)  # the test split is read through Ray Data
    prompt, zero_shot, artifact = _prompt_and_labels(config, source)
    label_names = list(prompt.label_names)
    total, counts = parameters_per_depth(source, trust_remote_code=config.model.trust_remote_code,
                                         revision=config.model.revision, lm_head=True)
    selection = resolve_selection(total if config.layers is None else config.layers, total)
    kept = selection.count
    rows, data_path = _test_rows(config, label_names)
    store = RunStore(config.run_dir()).create()
    fingerprint = digest(_settings(config, source.path, prompt, data_path))
    finished = store.finished("summary.json", fingerprint, announce=False)
    if finished is not None:
        result = ClassifyResult.from_json(finished, f"{store.root}/summary.json")
        store.announce_finished()
        return result
    # Chunks are keyed by the fingerprint: scores of another setup are never mixed in, and
    # a setup scored before is reused when it comes back.
    saved_chunks = store.items(f"chunks/{fingerprint}", "{key:05d}.npz", NPZ)
    store.record_config(config)

    texts = [row["text"] for row in rows]
    chunks = [texts[i:i + config.chunk_size] for i in range(0, len(texts), config.chunk_size)]
    pending = [i for i in range(len(chunks)) if not saved_chunks.has(i)]
    spec = replace(config.model.spec(source, config.layers), lm_head=True)
    progress = _progress(config, len(chunks), len(chunks) - len(pending))
    for index, scores, seconds in _score_chunks(config, spec, prompt, chunks, pending):
        saved_chunks.save(index, {"scores": scores, "seconds": np.float64(seconds)})
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    saved = [saved_chunks.load(i) for i in range(len(chunks))]
    scores = np.concatenate([s["scores"] for s in saved])
    seconds = float(sum(float(s["seconds"]) for s in saved))
    gold = [row["label"] for row in rows]
    predicted = scores.argmax(axis=1).tolist()
    metrics = classification_metrics(gold, predicted, label_names)
    summary = ClassifyResult(
        model=config.model.name_or_path, dataset=config.classification.label(),
        split=config.classification.test_split, zero_shot=zero_shot,
        layers=artifact["layers"] if artifact else kept,
        layers_total=artifact["total_layers"] if artifact else total,
        parameters=artifact["parameters"] if artifact else selection.parameters(counts),
        template=prompt.template, label_names=label_names,
        **metrics, texts_per_second=len(texts) / seconds if seconds else None,
        data=data_path, fingerprint=fingerprint,
    )
    store.files.write_csv("predictions.csv", ["text", "gold", "predicted", *label_names],
              [[t, label_names[g], label_names[p], *(f"{v:.5f}" for v in s)]
               for t, g, p, s in zip(texts, gold, predicted, scores)])
    _write_summary(store, summary)
    store.save_result("summary.json", summary.to_json())
    return summary


def _progress(config: ClassifyConfig, total: int, done: int):
    if not config.show_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="classifying", unit="chunk", file=sys.stderr)


def _write_summary(store: RunStore, summary: ClassifyResult) -> None:
    kind = "zero-shot" if summary.zero_shot else "prompt-tuned"
    lines = [f"# {summary.model} on {summary.dataset} ({summary.split}, {kind})", "",
             f"Layers: {summary.layers} of {summary.layers_total}; parameters: "
             f"{summary.parameters:,}", f"Template: `{summary.template!r}`", "",
             "| metric | value |", "|---|---|",
             f"| accuracy | {summary.accuracy:.4f} |", f"| macro-F1 | {summary.macro_f1:.4f} |",
             f"| majority-class rate | {summary.majority_rate:.4f} |",
             f"| examples | {summary.examples} |", "",
             "| label | F1 | predicted |", "|---|---|---|"]
    lines += [f"| {name} | {summary.per_class_f1[name]:.4f} | {summary.predicted_counts[name]} |"
              for name in summary.label_names]
    store.files.write_text("summary.md", "\n".join(lines) + "\n")


def print_summary(summary: ClassifyResult, run_dir: Path | str) -> None:
    files = RunStore(run_dir).files  # a local path or an object store URI
    print(files.read_text("summary.md"))
    print(f"predictions in {files.where('predictions.csv')}")


def render(config: ClassifyConfig, summary: ClassifyResult) -> int:
    print_summary(summary, config.run_dir())
    return 0


# `layercut evaluate-classifier` (registered in pipelines/cli.py)
ENTRY = Stage(ClassifyConfig, STAGE, run, render)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut evaluate-classifier` runs.
    from pipelines import classify

    sys.exit(run_as_script("evaluate-classifier", classify.ENTRY))

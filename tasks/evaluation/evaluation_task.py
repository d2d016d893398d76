"""The unit of work of the evaluation stage: load a model once, run mteb tasks on it.

``Evaluator`` is plain Python; ``evaluate_in_turn`` runs a task list on one (in-process, or as a Ray
task in a pooled, warm worker); ``EvaluationWorker`` is the class as a Ray actor, so a pool of them
spreads tasks over GPUs (or CPU slots), each loading the model once.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch

from tasks.errors import LayercutError
from tasks.evaluation.corpus_encoding import EncoderFactory, embed_with_ray_data
from tasks.evaluation.mteb_model import LayercutMTEBModel, sentence_transformer_embed
from tasks.evaluation.mteb_tasks import TaskSelection, load_task, subsample_task

if TYPE_CHECKING:
    from tasks.model.models import ModelSpec
    from tasks.model.prompts import PromptConfig


@dataclass(frozen=True)
class CorpusSplit:
    """Spread each input set of at least ``min_texts`` over ``workers`` Ray Data actors."""

    workers: int
    min_texts: int
    use_gpu: bool
    cpus_per_worker: float = 1.0


@dataclass(frozen=True)
class EvaluationModel:
    """What to evaluate: a decoder backbone (``spec``, a ModelSpec) or a sentence-transformers dir."""

    name: str
    revision: str
    spec: ModelSpec
    prompt: PromptConfig
    pooling: str = "weighted_mean"
    batch_size: int = 32
    instructions: dict[str, str] = field(default_factory=dict)
    corpus: CorpusSplit | None = None

    @property
    def is_sentence_transformer(self) -> bool:
        path = Path(self.spec.source.path)
        return self.spec.source.is_local and (path / "modules.json").is_file() \
            and not (path / "layercut.json").is_file()


class Evaluator:
    def __init__(self, model: EvaluationModel, data_root: str | None, threads: int = 0,
                 max_samples_per_split: int | None = None, selection: TaskSelection | None = None,
                 show_progress: bool = False):
        if threads:
            torch.set_num_threads(threads)
        import datasets

        # datasets' own bars (preparing a task's data) follow show_progress, both ways: a pooled
        # worker process may have run an evaluation that switched them off.
        (datasets.enable_progress_bars if show_progress else datasets.disable_progress_bars)()
        self.data_root = data_root
        self.selection = selection
        self.max_samples_per_split = max_samples_per_split
        if model.is_sentence_transformer:
            from tasks.model.models import resolve_device

            embed = sentence_transformer_embed(model.spec.source.path,
                                               device=str(resolve_device(model.spec.device)),
                                               batch_size=model.batch_size,
                                               show_progress=show_progress)
            large_embed = None
        else:
            factory = EncoderFactory(model.spec, model.prompt, model.pooling, model.batch_size)
            embed = factory()
            large_embed = None
            if model.corpus is not None and model.corpus.workers > 1:
                corpus = model.corpus

                def large_embed(texts, instructions):
                    return embed_with_ray_data(texts, instructions, factory, workers=corpus.workers,
                                               use_gpu=corpus.use_gpu,
                                               cpus_per_worker=corpus.cpus_per_worker)
        instructions = {} if model.is_sentence_transformer else model.instructions
        self.model = LayercutMTEBModel(
            embed, name=model.name, revision=model.revision, instructions=instructions,
            batch_size=model.batch_size, large_embed=large_embed,
            large_min_texts=model.corpus.min_texts if model.corpus else 0,
            progress=show_progress and not model.is_sentence_transformer)

    def evaluate(self, task_name: str) -> dict[str, Any]:
        """Run one task; one line on stderr when it starts and one when it ends (main score and
        time). Returns {task, result (mteb TaskResult), texts, encode_seconds, items}: items
        (tasks/evaluation/bootstrap.py) are what a subsampled task's score is computed from, kept for its
        bootstrap interval; None for a full task (nothing extra is kept or computed)."""
        import tempfile

        import mteb

        began = time.perf_counter()
        print(f"layercut: {task_name}: started", file=sys.stderr, flush=True)
        task = load_task(task_name, self.data_root, self.selection)
        if self.max_samples_per_split:
            task = subsample_task(task, self.max_samples_per_split)
        texts, seconds = self.model.texts_encoded, self.model.encode_seconds
        folder = tempfile.TemporaryDirectory() if self.max_samples_per_split else None
        try:
            result = mteb.evaluate(self.model, [task], cache=None, show_progress_bar=False,
                                   encode_kwargs={"batch_size": self.model.batch_size},
                                   prediction_folder=folder.name if folder else None)
            items = _items(task, result.task_results[0], folder.name) if folder else None
        except LayercutError:
            raise
        except Exception as exc:  # noqa: BLE001 - mteb and datasets raise many kinds
            text = str(exc).strip().splitlines()
            raise LayercutError(f"task {task_name} failed: {text[0] if text else type(exc).__name__}") from exc
        finally:
            if folder is not None:
                folder.cleanup()
        outcome = result.task_results[0]
        print(f"layercut: {task_name}: main score {outcome.get_score():.4f} "
              f"({task.metadata.main_score}) in {time.perf_counter() - began:.1f} s",
              file=sys.stderr, flush=True)
        return {"task": task_name, "result": outcome,
                "texts": self.model.texts_encoded - texts,
                "encode_seconds": self.model.encode_seconds - seconds, "items": items}


def _items(task, outcome, folder: str) -> dict[str, Any] | None:
    """The task's evaluated items from mteb's saved predictions, when they give back exactly
    mteb's own score (else None: no interval rather than a wrong one)."""
    import json

    from tasks.evaluation.bootstrap import evaluated_items, full_score

    path = Path(folder) / task.prediction_file_name
    if not path.exists():
        return None
    try:
        items = evaluated_items(task, json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:  # predictions of another shape: no interval
        print(f"layercut: {task.metadata.name}: no bootstrap interval ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)
        return None
    if items is None or abs(full_score(items) - float(outcome.get_score())) > 1e-6:
        return None
    return items


EvaluationWorker = ray.remote(Evaluator)


def evaluate_in_turn(model: EvaluationModel, data_root: str | None, names: list[str], threads: int = 0,
                     max_samples_per_split: int | None = None, selection: TaskSelection | None = None,
                     show_progress: bool = False):
    """Load ``model`` once and run the tasks ``names`` one after another, yielding each outcome
    (``Evaluator.evaluate``) as it finishes: in-process, or as a Ray streaming-generator task when
    one worker does all of an evaluation's work. Unlike an actor's, a task's worker process is
    pooled: the next evaluation (the probe, the untrained depth, the sweep's next trial) runs in it
    warm, with torch, transformers and mteb imported, instead of paying a process start (10-20 s
    on two cores) each time."""
    evaluator = Evaluator(model, data_root, threads, max_samples_per_split, selection, show_progress)
    for name in names:
        yield evaluator.evaluate(name)

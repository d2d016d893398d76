"""Stage 3's config (pipelines/evaluate.py): the model and depth, the mteb tasks and what of each
is scored, instructions, subsampling and the evaluation workers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipelines.config import DepthSetting, StrictModel
from pipelines.run_store.location import run_path
from pipelines.sections import EncoderSection, ModelSection, WorkersSection
from tasks.evaluation.mteb_tasks import TaskSelection

STAGE = "evaluate"


class EvaluateConfig(StrictModel):
    name: str | None = None  # run name; default: eval-<model>[-<layers>l]-<fingerprint>
    output_dir: str = "runs"  # or an object store URI: s3://bucket/prefix, gs://... (README)
    model: ModelSection = Field(default_factory=ModelSection)
    layers: DepthSetting | None = None  # evaluate the model cut to this depth (tasks/model/depth.py)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    tasks: list[str] = Field(default_factory=lambda: ["quick"])  # mteb names or presets
    # What of each task is scored (tasks/evaluation/mteb_tasks.TaskSelection): MTEB(eng)'s English subsets
    # of the test split by default; per-task splits or subsets win (e.g. STS17: [en-en, en-de]).
    languages: list[str] = Field(default_factory=lambda: ["eng"], min_length=1)
    splits: list[str] = Field(default_factory=lambda: ["test"], min_length=1)
    task_splits: dict[str, list[str]] = Field(default_factory=dict)
    task_subsets: dict[str, list[str]] = Field(default_factory=dict)
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
    show_progress: bool = True  # a bar over encoded batches (task start/end lines always print)

    def task_selection(self) -> TaskSelection:
        return TaskSelection(tuple(self.languages), tuple(self.splits),
                             {name: tuple(v) for name, v in self.task_splits.items()},
                             {name: tuple(v) for name, v in self.task_subsets.items()})

    def run_dir(self, fingerprint: str, artifact: dict | None = None) -> Path | str:
        """``name``, else eval-<model>[-<layers>l]-<fingerprint's first 8 digits>: another
        model or setting gets another directory. A fine-tuned artifact (a folder usually named
        ``model``; ``artifact`` is its layercut.json, pipelines.evaluate.evaluation_run_dir
        reads it) is named by its base model and depth. A Path, or a URI string when
        ``output_dir`` is one."""
        if self.name:
            return run_path(self.output_dir, self.name)
        label = self.model.slug()
        if artifact is not None:
            base = self.model.model_copy(update={"name_or_path": artifact["base_model"]}).slug()
            label = f"{base}-l{artifact['layers']}"
        depth = f"-{self.layers.slug}l" if self.layers is not None else ""
        return run_path(self.output_dir, f"eval-{label}{depth}-{fingerprint[:8]}")

"""The classification route's stage 3 config (pipelines/classify.py): the model, the labelled
dataset and prompt, the test subset and the scoring workers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipelines.config import DepthSetting, StrictModel
from pipelines.run_store.location import run_path
from pipelines.sections import ClassificationSection, ModelSection, WorkersSection

STAGE = "classify"


class ClassifyConfig(StrictModel):
    name: str | None = None  # run name; default: classify-<model>-<dataset>[-<layers>l]
    output_dir: str = "runs"  # or an object store URI: s3://bucket/prefix, gs://... (README)
    model: ModelSection = Field(default_factory=ModelSection)
    layers: DepthSetting | None = None  # score the model cut to this depth (zero-shot; tasks/model/depth.py)
    classification: ClassificationSection = Field(default_factory=ClassificationSection)
    # A seeded random subset of the test split (CPU-sized runs); None: every row.
    max_test_rows: int | None = Field(None, ge=2)
    seed: int = 42
    batch_size: int = Field(16, ge=1)  # texts per forward pass
    chunk_size: int = Field(128, ge=1)  # texts per unit of work (and of resume)
    show_progress: bool = True
    workers: WorkersSection = Field(default_factory=WorkersSection)

    def run_dir(self) -> Path | str:
        """<output_dir>/<name>, by default classify-<model>-<dataset>[-<layers>l]: a Path, or a
        URI string when ``output_dir`` is one."""
        depth = f"-{self.layers.slug}l" if self.layers is not None else ""
        default = f"classify-{self.model.slug()}-{self.classification.label()}{depth}"
        return run_path(self.output_dir, self.name or default)

"""Stage 1's config (pipelines/layer_loss.py): the model, the triplet sample, the loss, the workers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipelines.config import StrictModel
from pipelines.run_store.location import run_path
from pipelines.sections import (EncoderSection, LossSection, ModelSection, TripletDataSection,
                                WorkersSection)

STAGE = "layer_loss"


class LayerLossConfig(StrictModel):
    name: str | None = None  # run name; default: layer-loss-<model>
    output_dir: str = "runs"  # or an object store URI: s3://bucket/prefix, gs://... (README)
    model: ModelSection = Field(default_factory=ModelSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    data: TripletDataSection = Field(default_factory=TripletDataSection)
    loss: LossSection = Field(default_factory=LossSection)
    workers: WorkersSection = Field(default_factory=WorkersSection)

    def run_dir(self) -> Path | str:
        """The run directory: a Path, or a URI string when ``output_dir`` is one."""
        return run_path(self.output_dir, self.name or f"layer-loss-{self.model.slug()}")

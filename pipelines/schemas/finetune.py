"""Stage 2's config (pipelines/finetune.py): the depth, the objective's sections, LoRA, the
training recipe, DeepSpeed and the Ray Train workers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import DepthSetting, StrictModel
from pipelines.route_names import DEFAULT_ROUTE, RouteName
from pipelines.run_store.location import run_path
from pipelines.sections import (ClassificationSection, EncoderSection, LossSection, ModelSection,
                                RayWorkersSection, TripletSourceSection)
from tasks.model.layer_selection import LayerSelection

STAGE = "finetune"


class LoraSection(StrictModel):
    enabled: bool = True  # false: full fine-tuning (every weight trains)
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # None: every attention and MLP projection the family has (Phi-3: qkv_proj, gate_up_proj).
    target_modules: list[str] | None = None

    @field_validator("target_modules")
    @classmethod
    def _known_projection(cls, value):
        if value is not None and not value:
            raise ValueError("give at least one module name, or leave it unset for all projections")
        return value


class TrainingSection(StrictModel):
    """The paper's recipe by default (REFERENCE: Training)."""

    steps: int = Field(1000, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(300, ge=0)
    schedule: Literal["linear"] = "linear"  # transformers' get_linear_schedule_with_warmup
    # Where the linear decay reaches 0 (default: at `steps`): a step, or a number of passes over
    # the training data's global batches, as transformers' Trainer plans `num_train_epochs`. The
    # official recipe plans 3 epochs and stops at step 1000, with the rate still near its peak.
    decay_steps: int | None = Field(None, ge=1)
    decay_epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)  # per worker (per GPU); the global batch is x workers
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)  # transformers Trainer's default, as the official code
    gradient_checkpointing: bool | Literal["auto"] = "auto"  # auto: on GPU
    seed: int = 42
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(3, ge=0)  # Ray restarts the workers this often after a failure

    @model_validator(mode="after")
    def _one_horizon(self):
        if self.decay_steps is not None and self.decay_epochs is not None:
            raise ValueError("set decay_steps or decay_epochs, not both")
        return self

    def decay_horizon(self, batches_per_epoch: int) -> int:
        """The step where the learning rate reaches 0: ceil(decay_epochs x batches per epoch)
        (transformers' Trainer: max_steps = ceil(num_train_epochs x update steps per epoch))."""
        if self.decay_epochs is not None:
            return max(1, math.ceil(self.decay_epochs * batches_per_epoch))
        return self.decay_steps or self.steps


class DeepSpeedSection(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state in CPU memory
    config_file: str | None = None  # a DeepSpeed JSON laid over the generated one


class FinetuneConfig(StrictModel):
    name: str | None = None  # run name; default: finetune-<model>-l<layers>
    output_dir: str = "runs"  # or an object store URI: s3://bucket/prefix, gs://... (README)
    layers: DepthSetting | None = None  # 8, keep:0.7, prune:0.3, [0, 1, 5] (tasks/model/depth.py)
    force: bool = False  # resume even though the config differs from the checkpoint's
    show_progress: bool = True
    # contrastive: an embedding model (L3Prune; encoder, data, loss). classification: a
    # prompt-based classifier keeping the LM head ("Why Lift so Heavy?"; the classification section).
    objective: RouteName = DEFAULT_ROUTE  # a route's name (pipelines/route_names.py)
    model: ModelSection = Field(default_factory=ModelSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    data: TripletSourceSection = Field(default_factory=TripletSourceSection)
    loss: LossSection = Field(default_factory=LossSection)
    classification: ClassificationSection = Field(default_factory=ClassificationSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    workers: RayWorkersSection = Field(default_factory=RayWorkersSection)

    def run_dir(self, kept: int | LayerSelection, task: str) -> Path | str:
        """<output_dir>/<name>, by default finetune-<model><task>-<depth>; ``task``: the
        objective's part of the name (its route's ``TrainingRoute.name_suffix``). A Path, or a
        URI string when ``output_dir`` is one."""
        depth = kept.name if isinstance(kept, LayerSelection) else f"l{kept}"
        return run_path(self.output_dir, self.name or f"finetune-{self.model.slug()}{task}-{depth}")

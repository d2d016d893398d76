"""Stage 2 of the contrastive route: an embedding model trained with hard-negative InfoNCE on
triplets (query, positive, negative; tasks/training/objectives.py ``ContrastiveObjective``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.routes.base import TrainingInputs

if TYPE_CHECKING:
    from pipelines.schemas.finetune import FinetuneConfig


class ContrastiveTraining:
    """The contrastive objective's steps of pipelines/finetune.py (``TrainingRoute``)."""

    lm_head = False
    loss_label = "InfoNCE loss"

    def resolve(self, config: FinetuneConfig) -> FinetuneConfig:
        """Nothing to resolve: the data section holds its own data root."""
        return config

    def name_suffix(self, config: FinetuneConfig) -> str:
        """No task in the default run name: finetune-<model>-l<layers>."""
        return ""

    def wrapper(self, config: FinetuneConfig, tokenizer) -> tuple[str, str]:
        """The rendered (prefix, suffix) around a text; a bad input format fails now."""
        from tasks.model.prompts import PromptFormatter

        formatter = PromptFormatter(tokenizer, config.encoder.prompt())
        return formatter.prefix, formatter.suffix

    def inputs(self, config: FinetuneConfig, tokenizer, wrapper: tuple[str, str] | None) -> TrainingInputs:
        """The triplets' source and the objective. The rendered wrapper is part of the
        fingerprint: the same config on another tokenizer revision is another run."""
        from tasks.training.data import resolve_source
        from tasks.training.objectives import ContrastiveObjective

        path = resolve_source(config.data.source, config.data.local_source, config.data.data_root)
        objective = ContrastiveObjective(config.encoder.prompt(), config.encoder.pooling,
                                         config.loss.scale, config.loss.mask_duplicate_positives)
        settings = {"encoder": config.encoder.model_dump(exclude={"forward_batch_size"}),
                    "wrapper": list(wrapper) if wrapper else None,
                    "data": [path, config.data.layout, config.data.columns, config.data.invalid_rows],
                    "loss": config.loss.model_dump()}
        return TrainingInputs(objective, path, config.data.columns, None, settings)

    def read(self, config: FinetuneConfig, inputs: TrainingInputs) -> tuple[Any, dict[str, Any]]:
        """The triplets as an annotated Ray Dataset, and the data report."""
        from tasks.training.data import annotated_triplets

        return annotated_triplets(inputs.data_path, seed=config.training.seed,
                                  invalid_rows=config.data.invalid_rows,
                                  columns=config.data.columns, layout=config.data.layout)

    def artifact_fields(self, config: FinetuneConfig, inputs: TrainingInputs) -> dict[str, Any]:
        """An embedding model (tasks/export/embedding.py): how it pools and formats inputs, the
        loss scale for its card, and the instructions evaluation prepends to queries (the
        artifact serves them)."""
        from pipelines.evaluate import packaged_instructions  # the table `layercut evaluate` applies
        from tasks.export.embedding import EMBEDDING

        return {"pooling": config.encoder.pooling, "prompt": config.encoder.prompt(),
                "loss_scale": config.loss.scale, "instructions": packaged_instructions(),
                "writer": EMBEDDING}

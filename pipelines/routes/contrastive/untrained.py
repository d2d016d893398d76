"""The untrained baseline of a contrastive trial: the base model cut to the trial's depth, with no
fine-tuning, evaluated as the trial's artifact is (same tasks, subsample, splits, instructions,
input format and pooling). The trained score minus this one is the method's effect: L3Prune's
claim is that a short fine-tuning recovers what the cut lost (issue 17, item 9).

The evaluation is stage 3 itself, as `layercut evaluate --model <base> --layers N` runs it
(pipelines/evaluate.py), so its fingerprint guards its results and a resumed trial reuses the
tasks it already scored. The sweep's ``untrained_baseline: false`` leaves it out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.model.depth import Depth

if TYPE_CHECKING:
    from pipelines.schemas.evaluate import EvaluateConfig
    from pipelines.schemas.finetune import FinetuneConfig

# What names the base model in the trial's finetune config. How the model runs (dtype, device,
# attention) stays as the artifact's evaluation has it, so the two scores differ by training only.
BASE_MODEL_KEYS = ("name_or_path", "revision", "trust_remote_code")


def untrained_evaluation(evaluate: EvaluateConfig, finetune: FinetuneConfig, key: str,
                         layers: Depth | int) -> EvaluateConfig:
    """The trial's stage-3 config ``evaluate`` pointed at ``finetune``'s base model cut to
    ``layers`` (a count or a depth, e.g. a selection), run as ``<key>/untrained`` beside the
    trial's own evaluation.

    The artifact's evaluation takes its input format and pooling from the artifact, which records
    ``finetune``'s encoder section (tasks/export/artifact.py); the base model records none, so it gets
    that section here. Only the evaluation's batch size (no score depends on it) stays its own."""
    base = {name: getattr(finetune.model, name) for name in BASE_MODEL_KEYS}
    encoder = finetune.encoder.model_copy(
        update={"forward_batch_size": evaluate.encoder.forward_batch_size})
    return evaluate.model_copy(update={
        "name": f"{key}/untrained", "layers": Depth.parse(layers),
        "model": evaluate.model.model_copy(update=base), "encoder": encoder})

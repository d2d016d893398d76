"""The DeepSpeed JSON of a training run: generated from the run config, optionally overlaid.

A user's own DeepSpeed JSON may add or tune anything the run config does not decide (offload,
bucket sizes, communication settings...). A value the run config decides (batch size, precision,
ZeRO stage, learning rate, clipping) may be repeated but not contradicted: a contradiction is an
error, never a silent winner. The learning-rate schedule is layercut's own (linear warmup and
decay, stepped once per optimizer step), so a DeepSpeed ``scheduler`` section is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import LayercutError
from tasks.trees import merge_trees


@dataclass(frozen=True)
class OptimizationSettings:
    per_device_batch: int
    zero_stage: int
    bf16: bool
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    offload_optimizer: bool = False


def generated_config(settings: OptimizationSettings, world_size: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": settings.zero_stage}
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": settings.per_device_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": settings.per_device_batch * world_size,
        "bf16": {"enabled": settings.bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "gradient_clipping": settings.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": {
            "lr": settings.learning_rate, "betas": list(settings.betas), "eps": settings.eps,
            "weight_decay": settings.weight_decay,
            # torch's AdamW: no JIT-built fused kernel needed, on CPU or GPU.
            "torch_adam": not settings.offload_optimizer}},
        "steps_per_print": 10**9,  # layercut logs progress itself
        "wall_clock_breakdown": False,
    }


# (path in the JSON, what the run config calls it)
_DECIDED = (
    (("train_micro_batch_size_per_gpu",), "training.batch_size"),
    (("gradient_accumulation_steps",), "gradient accumulation (always 1)"),
    (("train_batch_size",), "training.batch_size x workers"),
    (("bf16", "enabled"), "training.precision"),
    (("fp16", "enabled"), "training.precision (fp16 is not supported; use bf16)"),
    (("zero_optimization", "stage"), "deepspeed.zero_stage"),
    (("gradient_clipping",), "training.max_grad_norm"),
    (("optimizer", "params", "lr"), "training.learning_rate"),
    (("optimizer", "params", "weight_decay"), "training.weight_decay"),
)


def _lookup(tree: dict, path: tuple[str, ...]):
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None, False
        tree = tree[part]
    return tree, True



def read_user_config(path: str) -> dict[str, Any]:
    try:
        loaded = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LayercutError(f"cannot read DeepSpeed config {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(loaded, dict):
        raise LayercutError(f"DeepSpeed config {path} is not a JSON object")
    return loaded


def deepspeed_config(settings: OptimizationSettings, world_size: int,
                     user: dict[str, Any] | None = None, user_path: str = "the DeepSpeed JSON") -> dict[str, Any]:
    """The generated config with ``user`` laid over it; contradictions are errors."""
    generated = generated_config(settings, world_size)
    if not user:
        return generated
    if "scheduler" in user:
        raise LayercutError(f"{user_path} sets a 'scheduler'; the schedule comes from "
                            "training.warmup_steps and training.steps: remove it")
    optimizer_type = (user.get("optimizer") or {}).get("type")
    if optimizer_type is not None and str(optimizer_type).lower() not in ("adamw", "adam"):
        raise LayercutError(f"{user_path} sets optimizer type {optimizer_type!r}; layercut trains "
                            "with AdamW (the paper's optimizer)")
    for path, decided_by in _DECIDED:
        value, present = _lookup(user, path)
        wanted, _ = _lookup(generated, path)
        if present and value != wanted and not (isinstance(value, (int, float)) and
                                                isinstance(wanted, (int, float)) and
                                                float(value) == float(wanted)):
            raise LayercutError(f"{user_path} sets {'.'.join(path)}={value!r}, which contradicts "
                                f"the run config ({decided_by} gives {wanted!r})")
    return merge_trees(generated, user)

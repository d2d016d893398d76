"""LoRA on every attention and MLP projection of a decoder backbone, through peft.

The projections are found by name in the model itself, so each family gets what it has: the
separate q/k/v/o and gate/up/down projections of Llama, Mistral, Qwen2 and Gemma, Phi-3's
fused ``qkv_proj`` and ``gate_up_proj`` (which the official L3Prune code missed), OPT's
q/k/v/out_proj and fc1/fc2, and GPT-2's fused ``c_attn``, ``c_proj`` and ``c_fc`` (transformers'
Conv1D layers, which peft handles with fan_in_fan_out).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tasks.errors import LayercutError

# Every projection name the supported families use for attention and MLP weights.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",
               "gate_proj", "up_proj", "down_proj", "gate_up_proj",
               "out_proj", "fc1", "fc2",  # OPT
               "c_attn", "c_proj", "c_fc")  # GPT-2


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: every projection the model has


def projection_names(model: nn.Module) -> list[str]:
    """Names (last path component) of the attention/MLP projections present in ``model``."""
    from transformers.pytorch_utils import Conv1D

    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] in PROJECTIONS}
    return [p for p in PROJECTIONS if p in found]


def add_lora(model: nn.Module, settings: LoraSettings):
    """``model`` wrapped as a peft model with fresh LoRA adapters; only they require grads."""
    from peft import LoraConfig, get_peft_model

    targets = list(settings.target_modules or projection_names(model))
    if not targets:
        raise LayercutError(f"no attention/MLP projection found in {type(model).__name__} for "
                            f"LoRA; set lora.target_modules (looked for {', '.join(PROJECTIONS)})")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise LayercutError(f"lora.target_modules {missing} are not modules of "
                            f"{type(model).__name__}")
    from transformers.pytorch_utils import Conv1D

    # GPT-2's Conv1D stores its weight transposed; peft must know (it would warn and guess).
    conv1d = any(isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
                 for name, module in model.named_modules())
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", fan_in_fan_out=conv1d)
    return get_peft_model(model, config)


def lora_targets_of(peft_model) -> list[str]:
    """Full names of the modules that received an adapter."""
    from peft.tuners.lora import LoraLayer

    return sorted(name for name, module in peft_model.named_modules() if isinstance(module, LoraLayer))

"""Layer pruning: keep the first n decoder layers of a backbone (L3Prune, REFERENCE: Pruning).

A pruned model must save and reload with plain ``transformers.AutoModel``, so every config field
that has one entry per layer (``layer_types`` and the like) is cut together with the layer list.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from tasks.depth import Depth
from tasks.errors import LayercutError

# Attribute paths of the decoder-layer list and of the final norm, per architecture style.
# Llama, Mistral, Qwen2, Phi-3 and Gemma 2/3 backbones (AutoModel) use the first entries; the
# others cover causal-LM wrappers (``model.layers``) and GPT-2 / OPT style models.
_LAYER_PATHS = ("layers", "model.layers", "language_model.layers", "h", "transformer.h",
                "decoder.layers", "model.decoder.layers")
_NORM_PATHS = ("norm", "model.norm", "language_model.norm", "ln_f", "transformer.ln_f",
               "decoder.final_layer_norm", "model.decoder.final_layer_norm")
_NUM_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first_module(model: nn.Module, paths: tuple[str, ...], kind: type, what: str):
    for path in paths:
        found = _get_path(model, path)
        if isinstance(found, kind):
            return found
    raise LayercutError(f"cannot find the {what} of {type(model).__name__}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _first_module(model, _LAYER_PATHS, nn.ModuleList, "decoder layer list")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm every decoder output passes through before it leaves the model."""
    return _first_module(model, _NORM_PATHS, nn.Module, "final norm")


def _text_config(config: Any) -> Any:
    # Multimodal wrappers (e.g. full Gemma 3) keep the decoder's fields in text_config.
    return getattr(config, "text_config", None) or config


def num_layers(config: Any) -> int:
    cfg = _text_config(config)
    for key in _NUM_LAYER_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    raise LayercutError(f"config of type {type(config).__name__} states no layer count")


def resolve_depth(depth: "Depth | int | str", total_layers: int) -> int:
    """Number of layers to keep of ``total_layers``: a Depth, a layer count, or a depth's text
    ("8", "keep:0.7", "prune:0.3"); see tasks/depth.py for the one rule.

    Raises:
        LayercutError: an invalid depth, or one outside the model's 1..L layers.
    """
    return Depth.parse(depth).layers(total_layers)


def _cut_config_in_place(config: Any, kept: int) -> None:
    cfg = _text_config(config)
    total = num_layers(cfg)
    resolve_depth(kept, total)
    for key, value in list(vars(cfg).items()):
        if key in _NUM_LAYER_KEYS and isinstance(value, int):
            setattr(cfg, key, kept)
        elif isinstance(value, (list, tuple)) and len(value) == total and "layer" in key:
            # Per-layer fields such as layer_types (Gemma 2/3; Qwen2 and Mistral in transformers 5).
            setattr(cfg, key, type(value)(value[:kept]))


def prune_config(config: Any, kept: int) -> Any:
    """A copy of ``config`` describing its first ``kept`` decoder layers only."""
    config = copy.deepcopy(config)
    _cut_config_in_place(config, kept)
    return config


def prune_model(model: nn.Module, kept: "Depth | int | str") -> nn.Module:
    """Cut ``model`` in place to its first ``kept`` decoder layers; returns the model.

    The config is edited in place because sub-modules (attention, rotary embedding, a causal-LM
    wrapper) hold references to the same config object.
    """
    layers = decoder_layers(model)
    kept = resolve_depth(kept, len(layers))
    del layers[kept:]
    _cut_config_in_place(model.config, kept)
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameters_at_depth(model: nn.Module) -> list[int]:
    """Parameter count of the backbone pruned to l layers, for l = 0..L, without pruning it."""
    layers = decoder_layers(model)
    base = count_parameters(model) - sum(count_parameters(layer) for layer in layers)
    counts = [base]
    for layer in layers:
        counts.append(counts[-1] + count_parameters(layer))
    return counts

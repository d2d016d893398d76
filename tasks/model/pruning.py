"""Layer pruning: keep a selection of a backbone's decoder layers (tasks/model/layer_selection.py), the
first n of them for L3Prune (REFERENCE: Pruning).

A pruned model must save and reload with plain ``transformers.AutoModel``, so every config field
that has one entry per layer (``layer_types`` and the like) keeps the kept layers' entries, and
a layer-count bound (Qwen2's ``max_window_layers``: layers below it use full attention) counts
the kept layers below it. Kept layers are renumbered 0..n-1 (their ``layer_idx``, which the KV
cache uses), so the cut model is exactly a fresh n-layer model holding those layers' weights.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from tasks.errors import LayercutError
from tasks.model.depth import Depth
from tasks.model.layer_selection import LayerSelection

if TYPE_CHECKING:  # torch where a model is pruned: config sections import this module's helpers
    from torch import nn

# Attribute paths of the decoder-layer list and of the final norm, per architecture style.
# Llama, Mistral, Qwen2, Phi-3 and Gemma 2/3 backbones (AutoModel) use the first entries; the
# others cover causal-LM wrappers (``model.layers``) and GPT-2 / OPT style models.
_LAYER_PATHS = ("layers", "model.layers", "language_model.layers", "h", "transformer.h",
                "decoder.layers", "model.decoder.layers")
_NORM_PATHS = ("norm", "model.norm", "language_model.norm", "ln_f", "transformer.ln_f",
               "decoder.final_layer_norm", "model.decoder.final_layer_norm")
_NUM_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# Config ints meaning "the first k layers behave one way, the rest another" (Qwen2 and Qwen2-MoE:
# sliding-window attention from layer max_window_layers on, when use_sliding_window).
_LAYER_BOUND_KEYS = ("max_window_layers",)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first_path(model: nn.Module, paths: tuple[str, ...], kind: type, what: str) -> str:
    for path in paths:
        if isinstance(_get_path(model, path), kind):
            return path
    raise LayercutError(f"cannot find the {what} of {type(model).__name__}")


def _first_module(model: nn.Module, paths: tuple[str, ...], kind: type, what: str):
    return _get_path(model, _first_path(model, paths, kind, what))


def decoder_layers_path(model: nn.Module) -> str:
    """The attribute path of the decoder-layer list ("layers", "model.layers", "h", ...)."""
    from torch import nn

    return _first_path(model, _LAYER_PATHS, nn.ModuleList, "decoder layer list")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get_path(model, decoder_layers_path(model))


def final_norm(model: nn.Module) -> nn.Module:
    """The norm every decoder output passes through before it leaves the model."""
    from torch import nn

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


def resolve_depth(depth: "Depth | LayerSelection | int | str", total_layers: int) -> int:
    """Number of layers to keep of ``total_layers``: a Depth, a layer count, or a depth's text
    ("8", "keep:0.7", "prune:0.3"); see tasks/model/depth.py for the one rule.

    Raises:
        LayercutError: an invalid depth, or one outside the model's 1..L layers.
    """
    return resolve_selection(depth, total_layers).count


def resolve_selection(depth: "Depth | LayerSelection | int | str | list[int]",
                      total_layers: int) -> LayerSelection:
    """The kept layers of ``total_layers``: a LayerSelection as is, or any depth (a count keeps
    the first that many layers).

    Raises:
        LayercutError: an invalid depth, an index outside 0..L-1, or a selection of another L.
    """
    if isinstance(depth, LayerSelection):
        if depth.total != total_layers:
            raise LayercutError(f"layer selection {depth.label} is of {depth.total} layers; "
                                f"the model has {total_layers}")
        return depth
    return Depth.parse(depth).select(total_layers)


def _cut_config_in_place(config: Any, kept: "LayerSelection | Depth | int") -> None:
    cfg = _text_config(config)
    total = num_layers(cfg)
    indices = resolve_selection(kept, total).indices
    for key, value in list(vars(cfg).items()):
        if key in _NUM_LAYER_KEYS and isinstance(value, int):
            setattr(cfg, key, len(indices))
        elif key in _LAYER_BOUND_KEYS and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, key, sum(index < value for index in indices))
        elif isinstance(value, (list, tuple)) and len(value) == total and "layer" in key:
            # Per-layer fields such as layer_types (Gemma 2/3; Qwen2 and Mistral in transformers 5).
            setattr(cfg, key, type(value)(value[index] for index in indices))


def prune_config(config: Any, kept: "LayerSelection | Depth | int") -> Any:
    """A copy of ``config`` describing only the kept decoder layers (a count: the first ``kept``)."""
    config = copy.deepcopy(config)
    _cut_config_in_place(config, kept)
    return config


def prune_model(model: nn.Module, kept: "LayerSelection | Depth | int | str | list[int]") -> nn.Module:
    """Cut ``model`` in place to its kept decoder layers (a count: the first ``kept``); returns the
    model.

    The config is edited in place because sub-modules (attention, rotary embedding, a causal-LM
    wrapper) hold references to the same config object.
    """
    layers = decoder_layers(model)
    selection = resolve_selection(kept, len(layers))
    if selection.is_prefix:
        del layers[selection.count:]
    else:
        chosen = [layers[index] for index in selection.indices]
        del layers[:]
        layers.extend(chosen)
        renumber_layers(model)
    _cut_config_in_place(model.config, selection)
    return model


def renumber_layers(model: nn.Module) -> None:
    """Set every ``layer_idx`` inside decoder layer j to j: attention modules address the KV cache
    (and some families their per-layer config entries) by it, and a kept layer moved from its
    original position must use its new one, as it would in a fresh model of the cut size."""
    for position, layer in enumerate(decoder_layers(model)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position


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

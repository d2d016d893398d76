"""Pruning: depth resolution, and a prune -> save -> reload round trip for every family."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import FAMILIES
from conftest import padded_inputs as _inputs
from tasks.errors import LayercutError
from tasks.model.depth import Depth
from tasks.model.models import ModelSource, load_backbone
from tasks.model.pruning import (count_parameters, decoder_layers, num_layers, parameters_at_depth,
                           prune_model, resolve_depth)


# Layers kept for L = 18 (Gemma-3-270M), 28 (Qwen2-7B), 30 (SmolLM2), 32 (Llama-3-8B, Mistral-7B,
# Phi-3-mini), by the official rule n = int(L * (1 - p)) worked out by hand in exact arithmetic.
DEPTH_TABLE = {
    #                  18  28  30  32
    "keep:1.0":       (18, 28, 30, 32),
    "keep:0.9":       (16, 25, 27, 28),  # 16.2, 25.2, 27, 28.8
    "keep:0.8":       (14, 22, 24, 25),  # 14.4, 22.4, 24, 25.6
    "keep:0.7":       (12, 19, 21, 22),  # 12.6, 19.6, 21, 22.4
    "prune:0.3":      (12, 19, 21, 22),  # the same depth, said the paper's way
    "keep:0.4":       (7, 11, 12, 12),   # 7.2, 11.2, 12, 12.8
    "keep:0.3":       (5, 8, 9, 9),      # 5.4, 8.4, 9, 9.6
    "prune:0.9":      (1, 2, 3, 3),      # 1.8, 2.8, 3 (floats: int(30 * (1 - 0.9)) == 2), 3.2
    "prune:0.25":     (13, 21, 22, 24),  # 13.5, 21, 22.5, 24
    "prune:0":        (18, 28, 30, 32),
    "keep:75%":       (13, 21, 22, 24),
    "prune:0.3125":   (12, 19, 20, 22),  # 12.375, 19.25, 20.625, 22
    "8":              (8, 8, 8, 8),
}


@pytest.mark.parametrize("depth", sorted(DEPTH_TABLE))
def test_depth_table(depth):
    assert tuple(resolve_depth(depth, total) for total in (18, 28, 30, 32)) == DEPTH_TABLE[depth]
    parsed = Depth.parse(depth)
    assert Depth.parse(str(parsed)) == parsed  # configs and trial origins write it back as text


@pytest.mark.parametrize("depth, message", [
    (0, "at least 1"), (33, "out of range"), (-1, "at least 1"), (0.3, "ambiguous: write prune:0.3"),
    (1.0, "ambiguous"), (True, "not a depth"), ("keep:0", "lies in (0, 1]"), ("keep:1.5", "lies in (0, 1]"),
    ("prune:1", "lies in [0, 1)"), ("prune:0.99", "keeps none"), ("prune:x", "is not a number"), ("3.5", "ambiguous"), ("eight", "not a depth"),
])
def test_resolve_depth_rejects(depth, message):
    with pytest.raises(LayercutError, match=re.escape(message)):
        resolve_depth(depth, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_save_reload_round_trip(family, tiny_model_dirs, tmp_path):
    model = AutoModel.from_pretrained(tiny_model_dirs[family]).eval()
    total = num_layers(model.config)
    per_layer_before = list(getattr(model.config, "layer_types", None) or [])
    prune_model(model, 4)
    assert len(decoder_layers(model)) == 4 == num_layers(model.config) < total
    if per_layer_before:
        assert list(model.config.layer_types) == per_layer_before[:4]
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).num_hidden_layers == 4
    reloaded = AutoModel.from_pretrained(tmp_path).eval()  # plain transformers, no layercut code
    assert len(decoder_layers(reloaded)) == 4
    ids, mask = _inputs()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = reloaded(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Loading already pruned gives the same model as pruning after loading.
    direct = load_backbone(ModelSource(tiny_model_dirs[family], True), layers=4)
    with torch.no_grad():
        torch.testing.assert_close(
            direct(input_ids=ids, attention_mask=mask).last_hidden_state, expected, rtol=0, atol=0)


def test_parameter_counts_match_pruned_models(tiny_model_dirs):
    model = AutoModel.from_pretrained(tiny_model_dirs["llama"])
    counts = parameters_at_depth(model)
    assert counts[-1] == count_parameters(model)
    for kept in (1, 3, 6):
        pruned = load_backbone(ModelSource(tiny_model_dirs["llama"], True), layers=kept)
        assert counts[kept] == count_parameters(pruned)


def test_fraction_prunes_as_the_paper(tiny_model_dirs):
    model = AutoModel.from_pretrained(tiny_model_dirs["qwen2"])
    prune_model(model, "prune:0.5")  # int(6 * 0.5) = 3 layers kept
    assert len(decoder_layers(model)) == 3 and model.config.num_hidden_layers == 3


def test_packaged_configs_validate():
    from pipelines.config import CONFIG_DIR, find_config, load_config
    from pipelines.layer_loss import LayerLossConfig

    names = sorted(p.stem for p in (CONFIG_DIR / "layer_loss").glob("*.yaml"))
    assert {"smollm2-135m", "llama3-8b", "mistral-7b", "qwen2-7b", "phi3-mini"} <= set(names)
    for name in names:
        config = load_config(LayerLossConfig, find_config(name, "layer_loss"))
        assert config.loss.scale == 50 and config.encoder.pooling == "weighted_mean"
        assert config.model.trust_remote_code is False

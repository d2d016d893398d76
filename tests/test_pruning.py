"""Pruning: depth resolution, and a prune -> save -> reload round trip for every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import FAMILIES
from tasks.errors import LayercutError
from tasks.models import ModelSource, load_backbone
from tasks.pruning import (count_parameters, decoder_layers, num_layers, parameters_at_depth,
                           prune_model, resolve_depth)


@pytest.mark.parametrize("depth, total, kept", [
    (1, 32, 1), (32, 32, 32), (25, 32, 25), (0.25, 32, 24), (0.3, 32, 22), (0.8, 28, 5),
    (0.5, 30, 15), (3.0, 30, 3),
])
def test_resolve_depth(depth, total, kept):
    assert resolve_depth(depth, total) == kept


@pytest.mark.parametrize("depth", [0, 33, -1, -0.5, 1.5, 0.99, True, "3"])
def test_resolve_depth_rejects(depth):
    with pytest.raises(LayercutError):
        resolve_depth(depth, 32)


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


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
    prune_model(model, 0.5)  # int(6 * 0.5) = 3 layers kept
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

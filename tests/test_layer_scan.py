"""The one-pass per-layer scan equals models actually pruned to l layers and run normally."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES
from tasks.model.encoder import Encoder, build_encoder
from tasks.model.models import ModelSource, ModelSpec
from tasks.model.prompts import PromptConfig
from tasks.scan.layer_scan import batch_layer_losses, duplicate_mask
from tasks.training.loss import hard_negative_infonce


def _batch(rows, size):
    picked = rows[:size]
    return {f: [r.get(f) for r in picked] for f in ("query", "positive", "negative", "instruction")}


def _pruned_loss(spec: ModelSpec, batch, kept: int, pooling: str, scale: float):
    """Independent path: load the model cut to ``kept`` layers and encode normally."""
    pruned = build_encoder(ModelSpec(source=spec.source, layers=kept, attn_implementation=spec.attn_implementation),
                           PromptConfig(), pooling=pooling, batch_size=4)
    q = pruned.encode(batch["query"], batch["instruction"])
    p = pruned.encode(batch["positive"])
    n = pruned.encode(batch["negative"])
    return hard_negative_infonce(q, p, n, scale).item(), q


@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_equals_truly_pruned_per_family(family, tiny_model_dirs, triplet_rows):
    spec = ModelSpec(source=ModelSource(tiny_model_dirs[family], True), attn_implementation="eager")
    encoder = build_encoder(spec, PromptConfig(), pooling="weighted_mean", batch_size=6)
    batch = _batch(triplet_rows, 6)
    losses = batch_layer_losses(encoder, batch, scale=50.0)
    assert losses.shape == (encoder.num_layers,)
    all_layers = encoder.encode(batch["query"], batch["instruction"], all_layers=True)
    for kept in (1, 2, 4, 6):
        expected_loss, expected_q = _pruned_loss(spec, batch, kept, "weighted_mean", 50.0)
        torch.testing.assert_close(all_layers[kept - 1], expected_q, rtol=1e-5, atol=1e-5)
        assert losses[kept - 1] == pytest.approx(expected_loss, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_one_pass_other_poolings(pooling, tiny_model_dirs, triplet_rows):
    spec = ModelSpec(source=ModelSource(tiny_model_dirs["llama"], True))
    encoder = build_encoder(spec, PromptConfig(), pooling=pooling, batch_size=8)
    batch = _batch(triplet_rows, 4)
    losses = batch_layer_losses(encoder, batch, scale=20.0)
    for kept in (2, 5):
        expected, _ = _pruned_loss(spec, batch, kept, pooling, 20.0)
        assert losses[kept - 1] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_one_pass_masks_duplicates_and_pools_an_empty_text(tiny_model_dirs):
    """The duplicates case (one query twice, one positive twice), with row 3's query blank: the
    stage-1 loss leaves the false negatives out (or not, when switched off) and stays finite."""
    import json

    from conftest import SHARED_CASES

    rows = [json.loads(line) for line in
            (SHARED_CASES / "duplicates" / "train" / "triplets.jsonl").read_text().splitlines()]
    rows[3]["query"] = "  "
    batch = _batch(rows, 4)
    encoder = build_encoder(ModelSpec(source=ModelSource(tiny_model_dirs["llama"], True)), PromptConfig(),
                            batch_size=12)
    masked = batch_layer_losses(encoder, batch, scale=50.0)
    plain = batch_layer_losses(encoder, batch, scale=50.0, mask_duplicates=False)
    q = encoder.encode(batch["query"], batch["instruction"], all_layers=True)
    p, n = encoder.encode(batch["positive"], all_layers=True), encoder.encode(batch["negative"], all_layers=True)
    exclude = torch.zeros(4, 8, dtype=torch.bool)
    exclude[[0, 0, 1, 2], [1, 2, 0, 0]] = True  # (query, candidate) pairs of the case, by hand
    torch.testing.assert_close(torch.from_numpy(masked).float(), hard_negative_infonce(q, p, n, 50.0, exclude),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(plain).float(), hard_negative_infonce(q, p, n, 50.0),
                               rtol=1e-5, atol=1e-5)
    assert torch.isfinite(torch.from_numpy(masked)).all() and (masked <= plain).all() and (masked < plain).any()


def test_embeddings_do_not_depend_on_batching(tiny_model_dirs, triplet_rows):
    """Position ids ignore left padding, so grouping texts differently changes nothing."""
    spec = ModelSpec(source=ModelSource(tiny_model_dirs["gemma3"], True))
    texts = [r["query"] for r in triplet_rows[:7]]
    model, tokenizer = spec.load()
    from tasks.model.prompts import PromptFormatter

    formatter = PromptFormatter(tokenizer, PromptConfig())
    one_by_one = Encoder(model, formatter, batch_size=1).encode(texts, all_layers=True)
    together = Encoder(model, formatter, batch_size=7).encode(texts, all_layers=True)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)


def _cut_by_hand(model, kept: int) -> None:
    """Drop the decoder layers after the first ``kept``, in place, as one would by hand (the
    per-layer attention types go with their layers). Independent of layercut's pruning, whose
    loading path equals this for every family in test_pruning.py."""
    model.layers = torch.nn.ModuleList(list(model.layers)[:kept])
    model.config.num_hidden_layers = kept
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:kept]


def _real_model_scan_equals_cut_models(spec: ModelSpec, prompt: PromptConfig, batch, depths,
                                       layers: int) -> None:
    """The one-pass losses of a real model against the same model cut by hand to each depth in
    ``depths`` (descending: one load, cut further each time) and run normally."""
    from tasks.model.prompts import PromptFormatter

    model, tokenizer = spec.load()
    formatter = PromptFormatter(tokenizer, prompt)
    losses = batch_layer_losses(Encoder(model, formatter, batch_size=12), batch, scale=50.0)
    assert losses.shape == (layers,)
    exclude = torch.from_numpy(duplicate_mask(batch))  # the scan leaves duplicate positives out
    for kept in sorted(depths, reverse=True):
        _cut_by_hand(model, kept)
        pruned = Encoder(model, formatter, batch_size=4)
        q = pruned.encode(batch["query"], batch["instruction"])
        p, n = pruned.encode(batch["positive"]), pruned.encode(batch["negative"])
        expected = hard_negative_infonce(q, p, n, 50.0, exclude).item()
        assert losses[kept - 1] == pytest.approx(expected, rel=1e-4, abs=1e-4), kept


@pytest.mark.slow
def test_one_pass_equals_truly_pruned_smollm2(smollm2_dir, triplet_rows):
    batch = _batch(triplet_rows[100:], 4)
    assert not duplicate_mask(batch).any()
    _real_model_scan_equals_cut_models(ModelSpec(source=ModelSource(smollm2_dir, True)), PromptConfig(),
                                       batch, (1, 7, 15, 29), 30)


@pytest.mark.slow
def test_one_pass_equals_truly_pruned_gemma3_270m(triplet_rows):
    """The second real model: Gemma 3 mixes sliding-window and full-attention layers. (These
    rows repeat a TRECQA query, so both sides leave the duplicate positives out of its negatives.)"""
    from tasks.model.models import resolve_model

    batch = _batch(triplet_rows[300:], 4)
    assert duplicate_mask(batch).any()
    # A pretrained GGUF without a chat template.
    _real_model_scan_equals_cut_models(ModelSpec(source=resolve_model("gemma3-270m")),
                                       PromptConfig(use_chat_template=False), batch, (1, 6, 17), 18)

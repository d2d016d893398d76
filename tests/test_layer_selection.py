"""A selection of kept layers (not a prefix) against the same model built by deleting layers by
hand: loading, pruning in place, a LoRA training step, export and plain-transformers reload; the
per-layer config lists of Gemma-3 and Qwen2; how a selection is written and refused."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModel

import _results
from conftest import family_tokenizer, padded_inputs, tiny_config
from tasks.errors import LayercutError
from tasks.model.depth import Depth
from tasks.model.layer_selection import LayerSelection
from tasks.model.models import ModelSource, ModelSpec, load_backbone
from tasks.model.pruning import decoder_layers, prune_model

KEPT = (0, 1, 2, 5, 6)  # of 8: drops two middle layers and the last one


def _hidden(model) -> torch.Tensor:
    ids, mask = padded_inputs()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _save(model, tokenizer, path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _by_hand(full, config, kept) -> torch.nn.Module:
    """A fresh model of ``config`` (``len(kept)`` layers) holding the embeddings, final norm and
    decoder layers ``kept`` of ``full``, copied layer by layer: the reference of every test here."""
    torch.manual_seed(123)  # whatever the fresh weights, every one is overwritten below
    model = AutoModel.from_config(config).eval()
    state = {name: tensor for name, tensor in full.state_dict().items() if not name.startswith("layers.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith("layers.") for name in missing)
    for new, old in enumerate(kept):
        model.layers[new].load_state_dict(full.layers[old].state_dict())
    return model


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory, smollm2_dir):
    """(directory of a tiny random 8-layer Llama with Llama-3's template, the hand-cut model's dir)."""
    tokenizer = family_tokenizer(smollm2_dir, "llama")
    torch.manual_seed(0)
    full = AutoModel.from_config(tiny_config("llama", len(tokenizer), num_hidden_layers=8)).eval()
    base = _save(full, tokenizer, tmp_path_factory.mktemp("eight"))
    config = tiny_config("llama", len(tokenizer), num_hidden_layers=len(KEPT))
    hand = _save(_by_hand(full, config, KEPT), tokenizer, tmp_path_factory.mktemp("hand"))
    return base, hand


def test_loading_and_pruning_a_selection_equal_the_hand_cut_model(eight_layers):
    base, hand = eight_layers
    reference = AutoModel.from_pretrained(hand).eval()
    loaded = load_backbone(ModelSource(base, True), layers=list(KEPT))
    assert loaded.config.num_hidden_layers == len(KEPT) == len(decoder_layers(loaded))
    expected_state = reference.state_dict()
    assert loaded.state_dict().keys() == expected_state.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected_state[name]), name
    expected = _hidden(reference)
    torch.testing.assert_close(_hidden(loaded), expected, rtol=0, atol=0)
    # Cutting a loaded full model in place gives the same model; its attention layers are
    # renumbered 0..4 (the KV cache the forward above builds is addressed by layer_idx).
    in_place = prune_model(AutoModel.from_pretrained(base).eval(), "keep-indices:0-2,5-6")
    assert [layer.self_attn.layer_idx for layer in decoder_layers(in_place)] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(_hidden(in_place), expected, rtol=0, atol=0)


def test_a_backbone_selection_does_not_read_an_untied_lm_head(tmp_path, smollm2_dir, monkeypatch):
    """A causal LM checkpoint with its own LM head: the backbone of a selection (AutoModel) never
    reads the head (1 GB in bf16 for Llama-3's vocabulary); the causal LM of it keeps the head."""
    import transformers as tf

    from tasks.model import selected_weights

    tokenizer = family_tokenizer(smollm2_dir, "llama")
    torch.manual_seed(0)
    config = tiny_config("llama", len(tokenizer), num_hidden_layers=8)
    config.tie_word_embeddings = False
    full = tf.LlamaForCausalLM(config).eval()
    path = _save(full, tokenizer, tmp_path / "causal")
    read = []
    real = selected_weights.kept_weights

    def recording(*args, **kwargs):
        weights = real(*args, **kwargs)
        read.append(sorted(weights))
        return weights

    monkeypatch.setattr(selected_weights, "kept_weights", recording)
    backbone = load_backbone(ModelSource(path, True), layers=list(KEPT))
    assert not any(name.startswith("lm_head.") for name in read[-1]) and "model.norm.weight" in read[-1]
    torch.testing.assert_close(backbone.embed_tokens.weight, full.model.embed_tokens.weight, rtol=0, atol=0)
    causal = load_backbone(ModelSource(path, True), layers=list(KEPT), lm_head=True)
    assert "lm_head.weight" in read[-1]
    torch.testing.assert_close(causal.lm_head.weight, full.lm_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(causal.model.layers[3].mlp.up_proj.weight, full.model.layers[5].mlp.up_proj.weight,
                               rtol=0, atol=0)


def _job(model_dir: str, layers):
    from tasks.model.lora import LoraSettings
    from tasks.model.prompts import PromptConfig
    from tasks.training.deepspeed_config import OptimizationSettings
    from tasks.training.objectives import ContrastiveObjective
    from tasks.training.train_loop import TrainingJob

    return TrainingJob(
        spec=ModelSpec(ModelSource(model_dir, True), layers=layers, dtype="float32", device="cpu"),
        objective=ContrastiveObjective(PromptConfig(max_length=64), "weighted_mean", 50.0),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        optimization=OptimizationSettings(per_device_batch=4, zero_stage=0, bf16=False,
                                          learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1e9),
        steps=1, warmup_steps=0, gradient_checkpointing=False, checkpoint_every=1, seed=7,
        fingerprint="test")


def _train_step(job, rows):
    """(loss, {LoRA parameter: gradient}, the model after one SGD step): the training path's
    model (build_trainable: load, seed, LoRA) and loss (the objective bound to the tokenizer)."""
    from tasks.training.train_loop import build_trainable

    model, tokenizer = build_trainable(job)
    loss, _, _ = job.objective.bind(tokenizer)(model, rows, torch.device("cpu"))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p -= 0.5 * p.grad  # large enough that an untrained export would differ
    return loss.detach(), grads, model


def _info(layers: int, kept):
    from tasks.export.artifact import ArtifactInfo
    from tasks.model.prompts import PromptConfig

    return ArtifactInfo(
        base_model="tiny", base_model_path="tiny", layers=layers, total_layers=8, parameters=1,
        parameters_full=2, pooling="weighted_mean", prompt=PromptConfig(max_length=64),
        training={"learning_rate": 1e-3, "warmup_steps": 0, "schedule": "linear", "batch_size": 4,
                  "seed": 7},
        lora={"r": 4, "alpha": 8, "dropout": 0.0}, loss_scale=50.0, final_loss=None, steps_done=1,
        workers=1, data="none", kept_layers=kept)


def test_training_and_export_of_a_selection_equal_the_hand_cut_model(eight_layers, triplet_rows, tmp_path):
    from peft import PeftModel

    from tasks.export.artifact import export_artifact, read_layercut_file

    base, hand = eight_layers
    rows = {f: [row[f] for row in triplet_rows[240:244]]
            for f in ("query", "positive", "negative", "instruction")}
    selected_job = _job(base, Depth.parse("keep-indices:0-2,5-6"))
    loss, grads, trained = _train_step(selected_job, rows)
    hand_loss, hand_grads, hand_trained = _train_step(_job(hand, None), rows)
    # Same adapters on the same weights in the same order: the same numbers, bit for bit.
    assert loss.item() == hand_loss.item()
    assert grads.keys() == hand_grads.keys() and len(grads) == 7 * len(KEPT) * 2
    for name, grad in grads.items():
        assert torch.equal(grad, hand_grads[name]), name
    assert any(grad.abs().sum() > 0 for grad in grads.values())

    trained.save_pretrained(tmp_path / "adapter")  # what a checkpoint holds (tasks.training.train_loop)
    artifact = export_artifact(selected_job.spec, tmp_path / "adapter", tmp_path / "model",
                               _info(len(KEPT), KEPT))
    assert AutoConfig.from_pretrained(artifact).num_hidden_layers == len(KEPT)
    assert read_layercut_file(artifact)["kept_layers"] == list(KEPT)
    assert "decoder layers 0-2, 5-6 (5 of 8)" in (artifact / "README.md").read_text()
    reloaded = AutoModel.from_pretrained(artifact).eval()  # plain transformers, no layercut code
    assert isinstance(hand_trained, PeftModel)
    reference = hand_trained.merge_and_unload().eval()
    torch.testing.assert_close(_hidden(reloaded), _hidden(reference), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_hidden(reloaded), _hidden(AutoModel.from_pretrained(hand).eval()))


# The kept layers' attention kinds, by hand: Gemma-3 slides except every sixth layer (index 5);
# Qwen2 slides from max_window_layers (3) on.
FAMILY_CASES = {
    #          kept          layer_types of the cut model                      extra config
    "gemma3": ((0, 1, 2, 5, 6), ["sliding_attention"] * 3 + ["full_attention", "sliding_attention"], {}),
    "qwen2": ((0, 3, 5, 6), ["full_attention"] + ["sliding_attention"] * 3, {"max_window_layers": 1}),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_per_layer_config_lists_follow_the_kept_layers(family, smollm2_dir, tmp_path):
    kept, layer_types, extra = FAMILY_CASES[family]
    tokenizer = family_tokenizer(smollm2_dir, family)
    torch.manual_seed(0)
    full = AutoModel.from_config(tiny_config(family, len(tokenizer), num_hidden_layers=8)).eval()
    base = _save(full, tokenizer, tmp_path / "base")
    loaded = load_backbone(ModelSource(base, True), layers=list(kept))
    assert list(loaded.config.layer_types) == layer_types
    for key, value in extra.items():
        assert getattr(loaded.config, key) == value
    # The reference states the cut model's kinds itself (Qwen2 derives them from max_window_layers).
    config = tiny_config(family, len(tokenizer), num_hidden_layers=len(kept),
                         **(extra or {"layer_types": layer_types}))
    assert list(config.layer_types) == layer_types
    expected = _hidden(_by_hand(full, config, kept))
    torch.testing.assert_close(_hidden(loaded), expected, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "cut")
    torch.testing.assert_close(_hidden(AutoModel.from_pretrained(tmp_path / "cut").eval()), expected,
                               rtol=0, atol=0)
    # The same count as a prefix keeps other kinds, and the numbers show it.
    assert not torch.allclose(_hidden(load_backbone(ModelSource(base, True), layers=len(kept))), expected)


@pytest.mark.parametrize("written", [[0, 1, 2, 5, 6], [6, 5, 2, 1, 0], "keep-indices:0-2,5-6",
                                     "keep-indices: 0,1,2,5-6", "[0,1,2,5,6]", "keep-indices:0-2, 5, 6"])
def test_selection_syntax(written):
    depth = Depth.parse(written)
    assert depth == Depth("indices", KEPT)
    assert str(depth) == "keep-indices:0-2,5-6" and Depth.parse(str(depth)) == depth
    selection = depth.select(8)
    assert selection.name == "k0-2+5-6" and depth.slug == "k0-2+5-6"
    assert (selection.count, selection.is_prefix, selection.to_json()) == (5, False, list(KEPT))


def test_a_prefix_selection_is_the_prefix():
    assert Depth.parse("keep-indices:0-4").select(8) == Depth.parse(5).select(8) \
        == Depth.parse("keep:0.625").select(8) == LayerSelection.prefix(5, 8)
    assert LayerSelection.prefix(5, 8).name == "l5" and LayerSelection.prefix(5, 8).to_json() == 5
    # cumulative parameters: 10 outside the layers, layer l holds l + 1
    cumulative = [10, 11, 13, 16, 20, 25, 31, 38, 46]
    assert LayerSelection(KEPT, 8).parameters(cumulative) == 10 + 1 + 2 + 3 + 6 + 7
    assert LayerSelection.prefix(5, 8).parameters(cumulative) == cumulative[5]


@pytest.mark.parametrize("written, message", [
    ([], "the layer selection is empty"), ("keep-indices:", "the layer selection is empty"),
    ([0, 2, 2], "layer index 2 is given twice"), ("keep-indices:0-3,3", "layer index 3 is given twice"),
    ([0, -1], "layer index -1 is negative"), ([0, 1.5], "layer index 1.5 is not an integer"),
    ([True], "layer index True is not an integer"), ("keep-indices:2-0", "the range '2-0' runs backwards"),
    ("keep-indices:a", "'a' is not an index"), ([0, 8], "layer index 8 is out of range: the model has layers 0..7"),
])
def test_bad_selections_are_refused_naming_the_value(written, message):
    with pytest.raises(LayercutError, match=re.escape(message)):
        Depth.parse(written).select(8)


def test_config_and_cli_read_a_selection(tmp_path):
    from pipelines.config import dump_config, load_config
    from pipelines.finetune import FinetuneConfig

    path = tmp_path / "run.yaml"
    path.write_text("layers: [0, 1, 2, 5, 6]\n")
    assert load_config(FinetuneConfig, path).layers == Depth("indices", KEPT)
    cli = load_config(FinetuneConfig, path, [], {"layers": "keep-indices:0-2,5-6"})
    assert cli.layers == Depth("indices", KEPT)
    assert "layers: keep-indices:0-2,5-6" in dump_config(cli)
    path.write_text("layers: [0, 3, 3]\n")
    with pytest.raises(LayercutError) as error:
        load_config(FinetuneConfig, path)
    assert "layer index 3 is given twice" in str(error.value) and "\n" not in str(error.value)


def test_sweep_trials_name_a_selection_and_merge_it_with_its_prefix():
    from pipelines.sweep import ModelPlan, plan_trials

    grid = [Depth.parse(d) for d in ("keep-indices:0-2,5-6", "keep-indices:0-4", 5, [0, 1, 2, 3, 7])]
    plan = ModelPlan("m", None, None, "an evaluate config", grid, stage1=_results.stage1(8, 2, 5))
    trials = plan_trials([plan], use_l3prune=True)
    assert [(t.key, t.layers, t.origins) for t in trials] == [
        ("m-l5", 5, ("grid keep-indices:0-4", "grid 5", "l3prune-large")),
        ("m-k0-2+5-6", 5, ("grid keep-indices:0-2,5-6",)),
        ("m-k0-3+7", 5, ("grid keep-indices:0-3,7",)),
        ("m-l2", 2, ("l3prune-small",))]
    assert trials[1].depth == Depth("indices", KEPT) and trials[0].depth == Depth.parse(5)
    # The report compares depths by count: a run of these refuses before any work, in one line.
    from pipelines.sweep import check_one_trial_per_count

    with pytest.raises(LayercutError, match="trials m-l5 and m-k0-2\\+5-6 both keep 5 layers") as error:
        check_one_trial_per_count(trials)
    assert "\n" not in str(error.value)
    check_one_trial_per_count([trials[0], trials[3]])
    plan.grid = [Depth.parse([0, 8])]
    with pytest.raises(LayercutError, match=re.escape("m's grid: layer index 8 is out of range")):
        plan_trials([plan], use_l3prune=False)

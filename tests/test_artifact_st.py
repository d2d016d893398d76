"""An exported embedding model in sentence-transformers gives layercut's own embeddings, for
documents and for queries with an instruction, in every pooling mode, with and without the
closing template pooled, and in every family's chat template.

The artifact is exported from a cut model with an adapter (no training needed: the equality is
about input formatting and pooling), so these run in seconds without a cluster. The independent
computation is layercut's own encoder (tasks.model.encoder) on the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import FAMILIES

INSTRUCTION = "Given a query, retrieve relevant passages"
INSTRUCTIONS = {"STSBenchmark": "Retrieve semantically similar text.", "SciFact": INSTRUCTION}
# First words the tokenizer merges with the space before them (" guitar", " 123", " (") and ones it
# may not; a text with inner newlines; a one-token text; an empty and a whitespace-only text (pooled
# from the last prompt token, or from the closing template); a text of about 160 tokens, past the
# export's max_length of 64 (truncation must keep the same text tokens in both).
LONG = " ".join(f"The {n}th guitar player, tuning string {n % 6}, plays chord {chr(65 + n % 7)}." for n in range(10))
TEXTS = ["guitar player", "123 apples on the table", "(a note) in parentheses",
         "-- dashes first", "Two lines\nof text", "x", "", "  \n ", LONG, "  padded text \n"]


def _attention(model_dir: str) -> str:
    # transformers has no SDPA path for Gemma-2 (its logit soft-capping); its own default is eager.
    from transformers import AutoConfig

    return "eager" if AutoConfig.from_pretrained(model_dir).model_type == "gemma2" else "sdpa"


def export(tmp_path, model_dir: str, layers: int, pooling: str, closing: bool = False,
           max_length: int = 64, instructions: dict[str, str] = INSTRUCTIONS):
    """(artifact dir, its PromptConfig): ``model_dir`` cut to ``layers`` with a random adapter."""
    from tasks.export.artifact import ArtifactInfo, export_artifact
    from tasks.model.lora import LoraSettings, add_lora
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.model.prompts import PromptConfig

    spec = ModelSpec(ModelSource(model_dir, True), layers=layers, dtype="float32", device="cpu",
                     attn_implementation=_attention(model_dir))
    model, _ = spec.load()
    torch.manual_seed(3)
    adapted = add_lora(model, LoraSettings())
    with torch.no_grad():  # non-zero adapters, so the merge changes the weights
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    prompt = PromptConfig(max_length=max_length, pool_closing_tokens=closing)
    info = ArtifactInfo(
        base_model=model_dir, base_model_path=model_dir, layers=layers, total_layers=layers,
        parameters=1, parameters_full=2, pooling=pooling, prompt=prompt,
        training={"learning_rate": 2e-4, "warmup_steps": 0, "schedule": "linear", "batch_size": 4,
                  "seed": 42},
        lora={"r": 16, "alpha": 32, "dropout": 0.05}, loss_scale=50.0, final_loss=None,
        steps_done=0, workers=1, data="none", instructions=instructions)
    return export_artifact(spec, adapter, tmp_path / "model", info), prompt


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def _assert_equal(ours: torch.Tensor, st: torch.Tensor, atol: float) -> None:
    assert _cosine(ours, st).min() >= 0.99999, _cosine(ours, st)
    assert torch.allclose(ours, st, atol=atol, rtol=1e-4), (ours - st).abs().max()


def _both(model_dir, prompt, pooling):
    """((layercut, ST) document embeddings, (layercut, ST) query embeddings, the ST model)."""
    from sentence_transformers import SentenceTransformer

    from tasks.model.encoder import build_encoder
    from tasks.model.models import ModelSource, ModelSpec

    ours = build_encoder(ModelSpec(ModelSource(str(model_dir), True), dtype="float32", device="cpu",
                                   attn_implementation=_attention(str(model_dir))), prompt, pooling)
    # last_token artifacts hold no code: a plain load must work (remote code refused).
    st = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=pooling != "last_token")
    documents = (ours.encode(TEXTS), torch.tensor(st.encode_document(TEXTS, batch_size=4)))
    queries = (ours.encode(TEXTS, [INSTRUCTION] * len(TEXTS)),
               torch.tensor(st.encode_query(TEXTS, prompt_name="SciFact", batch_size=4)))
    return documents, queries, st


@pytest.mark.parametrize("closing", [False, True], ids=["text", "text+closing"])
@pytest.mark.parametrize("pooling", ["weighted_mean", "mean", "last_token"])
def test_sentence_transformers_equals_layercut_smollm2(tmp_path, smollm2_dir, pooling, closing):
    model_dir, prompt = export(tmp_path, smollm2_dir, 2, pooling, closing)
    (ours_d, st_d), (ours_q, st_q), st = _both(model_dir, prompt, pooling)
    _assert_equal(ours_d, st_d, 1e-4)
    _assert_equal(ours_q, st_q, 1e-4)
    modules = json.loads((model_dir / "modules.json").read_text())
    if pooling == "last_token":  # sentence-transformers' own modules only
        assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                                 "sentence_transformers.models.Pooling"]
        assert not list(model_dir.glob("*.py"))
    else:
        assert [m["type"] for m in modules] == ["layercut_modules.TextSpanTransformer",
                                                 "layercut_modules.TextSpanPooling"]


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_transformers_equals_layercut_every_chat_template(tmp_path, tiny_model_dirs, family):
    # The closing template rendered and pooled: the text-span module, and sentence-transformers'
    # own chat mode with its suffix restore on the long text (the text-only settings of both
    # paths are checked on SmolLM2 above; Mistral's prefix ends in a space, so its empty text's
    # last prompt token is checked without the closing template as well).
    settings = [("weighted_mean", True), ("last_token", True)] + \
        ([("last_token", False)] if family == "mistral" else [])
    for pooling, closing in settings:
        model_dir, prompt = export(tmp_path / f"{pooling}-{closing}", tiny_model_dirs[family], 2,
                                   pooling, closing)
        (ours_d, st_d), (ours_q, st_q), _ = _both(model_dir, prompt, pooling)
        _assert_equal(ours_d, st_d, 1e-5)
        _assert_equal(ours_q, st_q, 1e-5)


def test_why_mean_and_weighted_mean_carry_a_module(tmp_path, smollm2_dir):
    """The evidence for tasks/export/st_modules.py, on sentence-transformers' own code: (1) its prompt
    count for an instruction prompt is one token more than the prompt's tokens before " guitar";
    (2) its weightedmean, even given the exact prompt length, weights text token i by its
    position in the whole input, not by i, and so differs from layercut's pooling."""
    from sentence_transformers.models import Pooling, Transformer

    model_dir, prompt = export(tmp_path, smollm2_dir, 2, "last_token")
    # Plain-text mode, where sentence-transformers does count prompt tokens.
    transformer = Transformer(str(model_dir), model_kwargs={"dtype": torch.float32},
                              modality_config={"text": {"method": "forward",
                                                        "method_output_name": "last_hidden_state"}},
                              module_output_name="token_embeddings")
    query_prompt = f"{INSTRUCTION}{prompt.instruction_separator}"
    features = transformer.preprocess(["guitar player"], prompt=query_prompt)
    in_context = transformer.tokenizer(query_prompt + "guitar player")["input_ids"]
    alone = transformer.tokenizer(query_prompt)["input_ids"]
    assert len(alone) == int(features["prompt_length"]) == len(in_context) - 1  # (1): counts " "
    assert transformer.tokenizer.convert_ids_to_tokens(in_context[-2]) == "Ġguitar"
    # (2) with the exact prompt length (all but the last two tokens)
    exact = len(in_context) - 2
    features["prompt_length"] = exact
    with torch.no_grad():
        hidden = transformer(dict(features))["token_embeddings"]
    built_in = Pooling(hidden.shape[-1], "weightedmean", include_prompt=False)(
        {**features, "token_embeddings": hidden})["sentence_embedding"][0]
    text = hidden[0, exact:]
    ours = (text * torch.tensor([[1.0], [2.0]])).sum(0) / 3  # text tokens weighted 1, 2
    theirs = (text * torch.tensor([[exact + 1.0], [exact + 2.0]])).sum(0) / (2 * exact + 3)
    assert torch.allclose(built_in, theirs, atol=1e-5)
    assert float(_cosine(built_in, ours)) < 0.9999


def _card_info(base_model: str, data: str):
    from tasks.export.artifact import ArtifactInfo
    from tasks.model.prompts import PromptConfig

    return ArtifactInfo(
        base_model=base_model, base_model_path=base_model, layers=3, total_layers=30,
        parameters=38_900_000, parameters_full=134_515_008, pooling="weighted_mean", prompt=PromptConfig(),
        training={"learning_rate": 2e-4, "warmup_steps": 0, "schedule": "linear", "batch_size": 4,
                  "seed": 42},
        lora={"r": 16, "alpha": 32, "dropout": 0.05}, loss_scale=50.0, final_loss=1.5,
        steps_done=12, workers=2, data=data)


def test_model_cards_name_public_models_and_hold_no_local_path(tmp_path):
    """A card names a built-in model by its public hub id and license, a local model by its folder
    name (with the license its own card declares), local data by its file name: no absolute path,
    no placeholder link."""
    import yaml

    from tasks.export.classifier import classifier_card as _classifier_card
    from tasks.export.embedding import model_card as _model_card

    local = tmp_path / "my-base"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\n---\n# my base\n")
    data = str(tmp_path / "train" / "triplets.jsonl")
    builtin = _model_card(_card_info("smollm2-135m", data))
    front = yaml.safe_load(builtin.split("---", 2)[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert "`triplets.jsonl` (a local file)" in builtin
    own = _model_card(_card_info(str(local), data))
    front = yaml.safe_load(own.split("---", 2)[1])
    assert "base_model" not in front and front["license"] == "mit"
    assert "a local model (`my-base`)" in own
    hub = _model_card(_card_info("meta-llama/Meta-Llama-3-8B-Instruct", "sentence-transformers/all-nli"))
    assert yaml.safe_load(hub.split("---", 2)[1])["base_model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert "| training data | `sentence-transformers/all-nli` |" in hub
    classifier_info = _card_info(str(local), data)
    classifier_info = type(classifier_info)(**{
        **classifier_info.__dict__, "objective": "classification", "pooling": None, "prompt": None,
        "classification": {"template": "Review: {text}\nSentiment:", "label_names": ["negative", "positive"],
                           "verbalizers": [["bad"], ["good"]], "loss": "label words"}})
    for card in (builtin, own, hub, _classifier_card(classifier_info)):
        assert str(tmp_path) not in card and "](https://github.com/)" not in card
        assert not [word for word in card.split() if word.strip("`(),|").startswith("/")], card


def test_scores_go_into_the_card_and_replace_earlier_ones(tmp_path):
    """The card carries the measured scores (as a table and as the Hub's model-index, read back
    with huggingface_hub), marks a task whose texts occur in the training data, and a second
    evaluation replaces the first rather than adding to it."""
    from huggingface_hub import ModelCard

    from tasks.export.embedding import model_card as _model_card
    from tasks.export.card_scores import SECTION, card_with_scores

    rows = [{"task": "STSBenchmark", "type": "STS", "main_score": 0.612345678, "splits": ["test"],
             "subsets": ["default"]},
            {"task": "SICK-R", "type": "STS", "main_score": 0.55, "splits": ["test"], "subsets": ["default"]}]
    overlap = {"SICK-R": {"texts": 200, "overlapping": 180}, "STSBenchmark": {"texts": 200, "overlapping": 0}}
    base = _model_card(_card_info("smollm2-135m", str(tmp_path / "triplets.jsonl")))
    first = card_with_scores(base, "smollm2-135m-l3 (layercut)", rows, overlap, {"LayercutSST2": 0.7})
    card = ModelCard(first)
    assert {r.dataset_name: r.metric_value for r in card.data.eval_results} == {
        "MTEB STSBenchmark": 0.612346, "MTEB SICK-R": 0.55}
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "| STSBenchmark | STS | 0.6123 | test | default |" in first
    assert "| SICK-R * | STS | 0.5500 |" in first and "SICK-R: 180 of 200 evaluated texts" in first
    assert "Mean main score over 2 tasks: 0.5812." in first and "LayercutSST2 0.7000" in first
    assert "| layers kept | 3 of 30 |" in first  # the card's own content stays

    second = card_with_scores(first, "smollm2-135m-l3 (layercut)", rows[:1], {}, {})
    assert second.count(SECTION) == 1 and "SICK-R" not in second
    assert [r.dataset_name for r in ModelCard(second).data.eval_results] == ["MTEB STSBenchmark"]
    assert str(tmp_path) not in second

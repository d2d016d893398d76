"""An exported embedding model in sentence-transformers gives layercut's own embeddings, for
documents and for queries with an instruction, in every pooling mode and chat template.

The artifact is exported from a cut model with an adapter (no training needed: the equality is
about input formatting and pooling), so these run in seconds without a cluster.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES

INSTRUCTION = "Given a query, retrieve relevant passages"
# First words the tokenizer merges with the space before them (" guitar", " 123", " (") and ones it
# may not; a text with inner newlines; a one-token text; an empty and a whitespace-only text (pooled
# from the last prompt token); a text of about 160 tokens, past the export's max_length of 64
# (truncation must keep the same text tokens in both).
LONG = " ".join(f"The {n}th guitar player, tuning string {n % 6}, plays chord {chr(65 + n % 7)}." for n in range(10))
TEXTS = ["guitar player", "123 apples on the table", "(a note) in parentheses",
         "-- dashes first", "Two lines\nof text", "x", "", "  \n ", LONG]


def _attention(model_dir: str) -> str:
    # transformers has no SDPA path for Gemma-2 (its logit soft-capping); its own default is eager.
    from transformers import AutoConfig

    return "eager" if AutoConfig.from_pretrained(model_dir).model_type == "gemma2" else "sdpa"


def _export(tmp_path, model_dir: str, layers: int, pooling: str):
    from tasks.artifact import ArtifactInfo, export_artifact
    from tasks.lora import LoraSettings, add_lora
    from tasks.models import ModelSource, ModelSpec
    from tasks.prompts import PromptConfig

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
    prompt = PromptConfig(max_length=64)
    info = ArtifactInfo(
        base_model=model_dir, base_model_path=model_dir, layers=layers, total_layers=layers,
        parameters=1, parameters_full=2, pooling=pooling, prompt=prompt,
        training={"learning_rate": 2e-4, "warmup_steps": 0, "schedule": "linear", "batch_size": 4,
                  "seed": 42},
        lora={"r": 16, "alpha": 32, "dropout": 0.05}, loss_scale=50.0, final_loss=None,
        steps_done=0, workers=1, data="none")
    return export_artifact(spec, adapter, tmp_path / "model", info), prompt


def _both(model_dir, prompt, pooling):
    """((layercut, ST) document embeddings, (layercut, ST) query embeddings, the ST model, the
    query prompt string)."""
    from sentence_transformers import SentenceTransformer

    from tasks.encoder import build_encoder
    from tasks.models import ModelSource, ModelSpec

    ours = build_encoder(ModelSpec(ModelSource(str(model_dir), True), dtype="float32", device="cpu",
                                   attn_implementation=_attention(str(model_dir))), prompt, pooling)
    st = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    query_prompt = st.prompts["document"] + INSTRUCTION + prompt.instruction_separator
    documents = (ours.encode(TEXTS), torch.tensor(st.encode(TEXTS, batch_size=4)))
    queries = (ours.encode(TEXTS, [INSTRUCTION] * len(TEXTS)),
               torch.tensor(st.encode(TEXTS, prompt=query_prompt, batch_size=4)))
    return documents, queries, st, query_prompt


@pytest.mark.parametrize("pooling", ["weighted_mean", "mean", "last_token"])
def test_sentence_transformers_equals_layercut_smollm2(tmp_path, smollm2_dir, pooling):
    model_dir, prompt = _export(tmp_path, smollm2_dir, 2, pooling)
    (ours_d, st_d), (ours_q, st_q), st, query_prompt = _both(model_dir, prompt, pooling)
    assert torch.allclose(ours_d, st_d, atol=1e-4, rtol=1e-4), (ours_d - st_d).abs().max()
    assert torch.allclose(ours_q, st_q, atol=1e-4, rtol=1e-4), (ours_q - st_q).abs().max()
    # The case the per-input count is for: sentence-transformers' own count of the query prompt
    # (the prompt tokenized alone, ending in a lone space token) is one more than the tokens
    # before " guitar" in the query, so its own count would drop the text's first word.
    features = st[0].preprocess(["guitar player"], prompt=query_prompt)
    alone = st.tokenizer(query_prompt, add_special_tokens=False)["input_ids"]
    assert len(alone) == int(features["prompt_length"][0]) + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_transformers_equals_layercut_every_chat_template(tmp_path, tiny_model_dirs, family):
    model_dir, prompt = _export(tmp_path, tiny_model_dirs[family], 2, "weighted_mean")
    (ours_d, st_d), (ours_q, st_q), _, _ = _both(model_dir, prompt, "weighted_mean")
    assert torch.allclose(ours_d, st_d, atol=1e-5, rtol=1e-4), (ours_d - st_d).abs().max()
    assert torch.allclose(ours_q, st_q, atol=1e-5, rtol=1e-4), (ours_q - st_q).abs().max()

"""Chat-template formatting, instruction/padding masking per family, and the pooling modes."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, family_tokenizer
from tasks.errors import LayercutError
from tasks.model.pooling import pool
from tasks.model.prompts import PromptConfig, PromptFormatter

TEXTS = ["A man is playing a guitar.", "Where is the Eiffel tower?"]
INSTRUCTIONS = ["Retrieve semantically similar text", None]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_wrapping_and_text_mask(family, smollm2_dir):
    tokenizer = family_tokenizer(smollm2_dir, family)
    formatter = PromptFormatter(tokenizer, PromptConfig())
    features = formatter(TEXTS, INSTRUCTIONS)
    for row, (text, instruction) in enumerate(zip(TEXTS, INSTRUCTIONS)):
        content = f"{instruction}; {text}" if instruction else text
        if family == "qwen2":  # its template adds a default system turn; the paper's wrapper has none
            expected = f"<|im_start|>user\n{content}<|im_end|>\n"
        else:
            expected = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False)
        ids = features["input_ids"][row][features["attention_mask"][row].bool()].tolist()
        # The model sees exactly what the family's own chat template renders.
        assert tokenizer.decode(ids) == expected
        # Only the text is pooled: not the template, not the instruction, not the padding.
        pooled_ids = features["input_ids"][row][features["pool_mask"][row]].tolist()
        assert tokenizer.decode(pooled_ids).strip() == text
        assert not (features["pool_mask"][row] & ~features["attention_mask"][row].bool()).any()
    # Left padding: the shorter row starts with padding, every row ends with real tokens.
    assert features["attention_mask"][:, -1].all()
    assert not features["attention_mask"].all()


def test_system_prompt_override_and_no_template(smollm2_dir):
    tokenizer = family_tokenizer(smollm2_dir, "qwen2")
    default = PromptFormatter(tokenizer, PromptConfig())
    assert default.prefix == "<|im_start|>user\n" and default.suffix == "<|im_end|>\n"
    custom = PromptFormatter(tokenizer, PromptConfig(system_prompt="Embed."))
    assert "Embed." in custom.prefix and "helpful" not in custom.prefix
    raw = PromptFormatter(tokenizer, PromptConfig(use_chat_template=False))
    features = raw(["plain text"])
    assert tokenizer.decode(features["input_ids"][0]) == tokenizer.decode(tokenizer("plain text")["input_ids"])


def test_default_system_turn_of_the_real_smollm2_template_is_dropped(base_tokenizer):
    formatter = PromptFormatter(base_tokenizer, PromptConfig())
    assert "SmolLM" in base_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert formatter.render("x")[0] == "<|im_start|>user\nx<|im_end|>\n"


def test_truncation_keeps_the_template(smollm2_dir):
    tokenizer = family_tokenizer(smollm2_dir, "llama")
    formatter = PromptFormatter(tokenizer, PromptConfig(max_length=16))
    features = formatter(["word " * 100])
    ids = features["input_ids"][0].tolist()
    assert len(ids) == 16
    assert tokenizer.decode(ids).endswith("<|eot_id|>")
    assert features["pool_mask"][0].sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_text_is_pooled_from_the_last_prompt_token(family, smollm2_dir):
    tokenizer = family_tokenizer(smollm2_dir, family)
    formatter = PromptFormatter(tokenizer, PromptConfig())
    instruction = "Retrieve semantically similar text"
    features = formatter(["", " \n ", "x"], [None, instruction, None])
    for row, prompt in ((0, formatter.prefix), (1, f"{formatter.prefix}{instruction}; ")):
        real = features["attention_mask"][row].bool()
        ids, pooled = features["input_ids"][row][real].tolist(), features["pool_mask"][row][real]
        assert int(pooled.sum()) == 1
        last = int(pooled.nonzero()[0])
        # Everything up to the pooled token is the prompt; what follows is the closing template.
        assert tokenizer.decode(ids[:last + 1]) == prompt
        assert tokenizer.decode(ids[last + 1:]) == formatter.suffix


def test_an_empty_text_without_any_prompt_token_is_a_clear_error(smollm2_dir):
    tokenizer = family_tokenizer(smollm2_dir, "qwen2")
    raw = PromptFormatter(tokenizer, PromptConfig(use_chat_template=False))
    assert tokenizer("")["input_ids"] == []  # this tokenizer adds no BOS: nothing to pool
    with pytest.raises(LayercutError, match=r"text 1 of the batch \(' '\): the text is empty and has no prompt"):
        raw(["a text", " "])
    # With an instruction there is a prompt token to stand for the empty text.
    assert int(raw([""], ["Retrieve"])["pool_mask"].sum()) == 1


HIDDEN = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 7.0]]])
MASK = torch.tensor([[False, True, True, True, False]])


def test_pooling_modes_on_hand_made_states():
    # weighted_mean: weights 1, 2, 3 on the three text tokens -> (1*1+2*3+3*5)/6, (1*2+2*4+3*6)/6
    torch.testing.assert_close(pool(HIDDEN, MASK, "weighted_mean"), torch.tensor([[22 / 6, 28 / 6]]))
    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool(HIDDEN, MASK, "last_token"), torch.tensor([[5.0, 6.0]]))


def test_pooling_ignores_nan_outside_the_mask():
    hidden = HIDDEN.clone()
    hidden[0, 0] = float("nan")
    for mode in ("weighted_mean", "mean", "last_token"):
        assert torch.isfinite(pool(hidden, MASK, mode)).all()

"""Which tokens are pooled (``encoder.pool_closing_tokens``), checked against the official rule.

The official L3Prune code (which adapts LLM2Vec) wraps ``instruction; text`` in the model's chat
wrapper, tokenizes the part after the instruction (the text and the closing template tokens) on
its own, and pools the LAST n tokens of the full input, n being that part's token count: the mask
is built from the end of the wrapped string. The masks below are built that way, by hand, and
compared with ``PromptFormatter``'s pool mask (the one function stage 1, training and evaluation
use), for the four paper families with their real public chat templates.
"""

from __future__ import annotations

import pytest
import torch

from tasks.model.prompts import PromptConfig, PromptFormatter

# The chat templates of the public tokenizer configs (tokenizer_config.json "chat_template").
REAL_TEMPLATES = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
               "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
               "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
               "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
               "<|end_header_id|>\n\n' }}{% endif %}",
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    # mistralai/Mistral-7B-Instruct-v0.2
    "mistral": ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
                "roles are supported!') }}{% endif %}{% endfor %}", [], " [/INST]"),
    # Qwen/Qwen2-7B-Instruct
    "qwen2": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
              "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
              [], "<|im_end|>\n"),
    # microsoft/Phi-3-mini-4k-instruct
    "phi3": ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
             "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
             "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
             "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
             ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|end|>\n"),
}
TEXTS = ["A man is playing a guitar.", "Where is the Eiffel tower?", "A guitar player", ""]
INSTRUCTIONS = [None, "Retrieve semantically similar text", "Given a query, retrieve relevant passages", None]


def _tokenizer(smollm2_dir, family):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    template, special, _ = REAL_TEMPLATES[family]
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    return tokenizer


def _official_mask(tokenizer, formatter, text: str, instruction: str | None, width: int) -> list[bool]:
    """LLM2Vec's rule: tokenize what follows the instruction (text + closing template) alone;
    the last that many tokens of the (left-padded) input are pooled."""
    closing = formatter.suffix
    n = len(tokenizer(text.strip() + closing, add_special_tokens=False)["input_ids"])
    return [False] * (width - n) + [True] * n


@pytest.mark.parametrize("family", sorted(REAL_TEMPLATES))
def test_pooled_span_is_the_official_one(family, smollm2_dir):
    tokenizer = _tokenizer(smollm2_dir, family)
    official = PromptFormatter(tokenizer, PromptConfig(pool_closing_tokens=True))
    assert official.suffix.startswith(REAL_TEMPLATES[family][2])
    features = official(TEXTS, INSTRUCTIONS)
    width = features["input_ids"].shape[1]
    for row, (text, instruction) in enumerate(zip(TEXTS, INSTRUCTIONS)):
        expected = _official_mask(tokenizer, official, text, instruction, width)
        assert features["pool_mask"][row].tolist() == expected, (family, text)
        # The pooled tokens spell the text and then the closing template.
        pooled = tokenizer.decode(features["input_ids"][row][features["pool_mask"][row]].tolist())
        assert pooled.lstrip() == (text + official.suffix).lstrip()
    # Text only (the default): the same inputs, the closing tokens left out of the mask.
    text_only = PromptFormatter(tokenizer, PromptConfig())(TEXTS[:3], INSTRUCTIONS[:3])
    for row, text in enumerate(TEXTS[:3]):
        pooled = tokenizer.decode(text_only["input_ids"][row][text_only["pool_mask"][row]].tolist())
        assert pooled.lstrip() == text
    assert torch.equal(text_only["input_ids"], official(TEXTS[:3], INSTRUCTIONS[:3])["input_ids"])


def test_where_the_official_count_reaches_into_the_instruction_the_text_span_wins(smollm2_dir):
    """The official count tokenizes the text alone; when the tokenizer splits the first word
    differently without the separator's space before it ("; guitar" -> ";", " guitar", but
    "guitar" alone -> several pieces), the count reaches back into the instruction. layercut
    takes the span from character offsets: the text and the closing template, nothing of the
    instruction (the official span is the same or longer by those instruction tokens)."""
    tokenizer = _tokenizer(smollm2_dir, "llama3")
    formatter = PromptFormatter(tokenizer, PromptConfig(pool_closing_tokens=True))
    features = formatter(["guitar player"], ["Given a query, retrieve relevant passages"])
    mask = features["pool_mask"][0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(features["input_ids"][0].tolist())
    official = _official_mask(tokenizer, formatter, "guitar player", None, len(mask))
    extra = sum(official) - sum(mask)
    assert extra >= 1 and official[-sum(mask):] == mask[-sum(mask):]
    assert tokens[len(mask) - sum(mask) - 1] == ";"  # the official span starts inside the instruction
    assert tokenizer.convert_tokens_to_string(tokens[-sum(mask):]) == " guitar player<|eot_id|>"

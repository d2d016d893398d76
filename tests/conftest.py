"""Shared fixtures: the real offline models, tiny random models of every family, a Ray cluster."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAYERCUT_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
TRIPLETS = SHARED_DATA / "train" / "triplets.jsonl"
SHARED_CASES = SHARED_DATA.parent / "cases"  # failure cases from real-world reports (read-only)

# Every Ray the suite starts (in-process, `ray start`, the autoscaler's simulated nodes, the CLI in
# a subprocess) inherits this process's environment. On 2 cores, process starts are the suite's
# largest cost, so two Ray features that only add processes here are off:
# - worker prestart: a raylet starts idle workers ahead of demand, without the job's runtime env,
#   which a job with a working_dir never uses (tests/test_main_job.py: about a quarter of its CPU
#   went to such workers, docs/benchmarks.md);
# - Ray Train's PreemptionWatcher, one actor per training run, for spot-instance preemption
#   notices, which a local cluster never gets.
# Users' clusters keep Ray's defaults; nothing in layercut sets these.
os.environ.setdefault("RAY_enable_worker_prestart", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

# Chat templates of the families (the wrapping part of each real template), so formatting is
# tested against each family's conventions with a tokenizer we have offline.
CHAT_TEMPLATES = {
    "llama": ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
              " + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
              ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "mistral": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                "{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant"
                " roles are supported!') }}{% endif %}{% endfor %}", []),
    "qwen2": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
              "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", []),
    "phi3": ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
             "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
             "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
             "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
             ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "gemma": ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
              "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
              "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
              ["<start_of_turn>", "<end_of_turn>"]),
}

TINY = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_hidden_layers=6, max_position_embeddings=512)


def padded_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of two rows of 12 tokens, the second left-padded by 4: longer
    than the tiny models' sliding window (8), so sliding and full attention layers differ."""
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


def free_port() -> int:
    """A TCP port nobody listens on now (for process groups and local Ray clusters in tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_config(family: str, vocab_size: int, **overrides):
    """A tiny random config of ``family`` (``overrides`` replace TINY's sizes, e.g. num_hidden_layers)."""
    import transformers as tf

    sizes = {**TINY, **overrides}
    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab_size, **sizes)
    if family == "mistral":
        return tf.MistralConfig(vocab_size=vocab_size, sliding_window=None, **sizes)
    if family == "qwen2":
        return tf.Qwen2Config(vocab_size=vocab_size, **{"use_sliding_window": True, "sliding_window": 8,
                                                        "max_window_layers": 3, **sizes})
    if family == "phi3":
        return tf.Phi3Config(vocab_size=vocab_size, pad_token_id=0, **sizes)
    if family == "gemma2":
        return tf.Gemma2Config(vocab_size=vocab_size, sliding_window=8, **sizes)
    if family == "gemma3":
        return tf.Gemma3TextConfig(vocab_size=vocab_size, sliding_window=8, **sizes)
    raise KeyError(family)


FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gemma2", "gemma3")
TEMPLATE_OF = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "phi3": "phi3",
               "gemma2": "gemma", "gemma3": "gemma"}


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from tasks.model.models import resolve_model

    return resolve_model("smollm2-135m").path


@pytest.fixture(scope="session")
def base_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def family_tokenizer(base_dir: str, family: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    template, special = CHAT_TEMPLATES[TEMPLATE_OF[family]]
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, smollm2_dir) -> dict[str, str]:
    """A saved tiny random model (with its family's chat template) per family."""
    from transformers import AutoModel

    dirs = {}
    for family in FAMILIES:
        tokenizer = family_tokenizer(smollm2_dir, family)
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_config(family, len(tokenizer)))
        target = tmp_path_factory.mktemp(f"tiny-{family}")
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        dirs[family] = str(target)
    return dirs


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory, smollm2_dir) -> str:
    """A saved tiny random Llama with an LM head (6 layers, tied embeddings) and Llama-3's chat
    template: a base model for both routes (the contrastive one loads its backbone)."""
    import transformers as tf

    tokenizer = family_tokenizer(smollm2_dir, "llama")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY))
    target = tmp_path_factory.mktemp("tiny-causal-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance for the session (2 CPUs, no dashboard), shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def triplet_rows():
    import json

    if not TRIPLETS.exists():
        pytest.fail(f"shared training data not found at {TRIPLETS} (set LAYERCUT_TEST_DATA)")
    return [json.loads(line) for line in TRIPLETS.read_text().splitlines() if line.strip()]

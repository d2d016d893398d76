"""The contrastive route's artifact: an embedding model loadable with sentence-transformers.

- the tokenizer with right padding (plain transformers code needs no position ids),
- sentence-transformers files: ``modules.json`` (Transformer -> Pooling), the Transformer's
  embedding template (chat mode: the model sees exactly layercut's input), the task instructions
  as prompts keyed the way mteb 2 picks them; ``last_token`` artifacts use sentence-transformers'
  own modules only (a plain ``SentenceTransformer(dir)``), ``mean``/``weighted_mean`` ones one
  text-span module pair (``layercut_modules.py``, from tasks/export/st_modules.py, which says
  why; load with ``trust_remote_code=True``),
- ``layercut.json``'s ``pooling`` and ``prompt`` (how layercut formats and pools inputs for this
  model) and the model card.

``EMBEDDING`` is the ``ArtifactWriter`` (tasks/export/artifact.py) the route hands the export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import LayercutError
from tasks.export.card import cut_model_rows, front_matter, lora_line, public_base_model, public_data, title
from tasks.model.prompts import PromptFormatter

if TYPE_CHECKING:
    from tasks.export.artifact import ArtifactInfo

ST_MODULES_FILE = "layercut_modules.py"  # tasks/export/st_modules.py, copied
POOLING_DIR = "1_Pooling"


def embedding_template(prefix: str, separator: str, closing: str) -> str:
    """A Jinja chat template that renders one embedding input as layercut does: ``prefix``, the
    system message (the prompt: a task instruction) and ``separator`` when there is one, the
    user message (the text) stripped, then ``closing``. Strings are JSON literals, which Jinja
    reads back unchanged (checked at export)."""
    def literal(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    return ("{%- set ns = namespace(instruction='', text='') -%}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{%- set ns.instruction = message['content'] | trim -%}"
            "{%- else -%}{%- set ns.text = message['content'] | trim -%}{%- endif -%}"
            "{%- endfor -%}"
            f"{{{{ {literal(prefix)} }}}}"
            f"{{%- if ns.instruction -%}}{{{{ ns.instruction + {literal(separator)} }}}}{{%- endif -%}}"
            f"{{{{ ns.text }}}}{{{{ {literal(closing)} }}}}")


def _check_template(tokenizer, template: str, expected) -> None:
    """The template renders what layercut renders, for a query and for a document."""
    for instruction in ("Retrieve semantically similar text.", None):
        messages = ([{"role": "system", "content": instruction}] if instruction else []) + \
                   [{"role": "user", "content": "  some text \n"}]
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        if rendered != expected(instruction):
            raise LayercutError(f"the artifact's embedding template renders {rendered!r}, "
                                f"layercut {expected(instruction)!r}")


def st_prompts(instructions: dict[str, str]) -> dict[str, str]:
    """sentence-transformers prompts as mteb 2 picks them (``mteb.models.abs_encoder.
    get_prompt_name``: "<task>-<prompt type>" first, then "<task>"): each task's instruction for
    queries and symmetric inputs (STS pairs, classification texts: prompt type None), and an
    empty "<task>-document" prompt, since documents carry no instruction."""
    prompts = {}
    for task, instruction in sorted(instructions.items()):
        prompts[task] = instruction
        prompts[f"{task}-document"] = ""
    return prompts


def _sentence_transformers_files(staging: Path, formatter: PromptFormatter, info: ArtifactInfo,
                                 hidden_size: int, instructions: dict[str, str]) -> None:
    """modules.json and the module configs: sentence-transformers' own Transformer (chat mode,
    the embedding template) and Pooling for last_token; layercut's text-span pair (one file,
    loaded with ``trust_remote_code=True``) for mean and weighted_mean (tasks/export/st_modules.py
    says why)."""
    prompt = info.prompt
    # The closing template is rendered when it is pooled. Otherwise it is left out: the model is
    # causal, so the text's states do not depend on it, and max_seq_length leaves its room empty
    # so a long text keeps exactly layercut's text tokens (tasks.model.prompts truncation).
    closing = formatter.suffix if prompt.pool_closing_tokens else ""
    separator = prompt.instruction_separator
    template = embedding_template(formatter.prefix, separator, closing)
    _check_template(formatter.tokenizer, template, lambda instruction: formatter.prefix + (
        f"{instruction}{separator}" if instruction else "") + "some text" + closing)
    custom = info.pooling != "last_token"
    (staging / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "",
         "type": "layercut_modules.TextSpanTransformer" if custom else "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR,
         "type": "layercut_modules.TextSpanPooling" if custom else "sentence_transformers.models.Pooling"},
    ], indent=2))
    (staging / "sentence_bert_config.json").write_text(json.dumps({
        "transformer_task": "feature-extraction",
        # Texts go through the chat template below (the tokenizer's own stays as it is).
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"},
                            "message": {"method": "forward", "method_output_name": "last_hidden_state",
                                        "format": "flat"}},
        "module_output_name": "token_embeddings",
        "processing_kwargs": {"chat_template": {"chat_template": template, "restore_suffix": True}},
        "max_seq_length": prompt.max_length - (0 if closing else formatter.closing_tokens()),
        "do_lower_case": False,
        "unpad_inputs": False,
    }, indent=2))
    (staging / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "SentenceTransformer",
        # A prompt is a task instruction (the template places it); mteb picks them by task name.
        "prompts": st_prompts(instructions),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }, indent=2))
    pooling_dir = staging / POOLING_DIR
    pooling_dir.mkdir()
    pooling = {"embedding_dimension": hidden_size, "pooling_mode": info.pooling} if custom else \
        {"embedding_dimension": hidden_size, "pooling_mode": "lasttoken", "include_prompt": True}
    (pooling_dir / "config.json").write_text(json.dumps(pooling, indent=2))
    if custom:
        shutil.copyfile(Path(__file__).with_name("st_modules.py"), staging / ST_MODULES_FILE)


def model_card(info: ArtifactInfo) -> str:
    training = info.training
    span = ("the text and the closing chat-template tokens (the official L3Prune rule)"
            if info.prompt.pool_closing_tokens else "the text tokens")
    custom = info.pooling != "last_token"
    load = ('SentenceTransformer("path/to/this/dir", trust_remote_code=True)  # layercut_modules.py'
            if custom else 'SentenceTransformer("path/to/this/dir")  # no remote code')
    why = ("This pooling mode uses one small module shipped in the directory (`layercut_modules.py`, "
           "text-span pooling): sentence-transformers' own `Pooling` cannot tell the text from the "
           "prompt per input, and its `weightedmean` weights by position in the whole input. "
           "Models exported with `last_token` pooling load with sentence-transformers' own modules only."
           if custom else "sentence-transformers' own `Transformer` and `Pooling` modules; no custom code.")
    base, hub_id, license_id = public_base_model(info.base_model)
    front = front_matter("sentence-transformers", "sentence-similarity", hub_id, license_id,
                          "layercut, l3prune, sentence-transformers, feature-extraction")
    return f"""{front}
# {title(info.base_model, hub_id)} cut to {info.layers} of {info.total_layers} layers (layercut)

A text encoder made by layercut with L3Prune ("Large Language Models Are Overparameterized Text
Encoders", 2024): {info.selection.describe("decoder layers")} of {base},
fine-tuned with LoRA on a contrastive (hard-negative InfoNCE) objective, adapters merged.

| | |
|---|---|
{cut_model_rows(info, base, license_id)}
| pooling | {info.pooling} over {span}; the chat-template prefix and the instruction are not pooled |
| training | {info.steps_done} steps, lr {training['learning_rate']}, warmup {training['warmup_steps']}, {training['schedule']} schedule, batch {training['batch_size']} x {info.workers} workers, seed {training['seed']} |
| LoRA | {lora_line(info)} |
| loss | InfoNCE, scale {info.loss_scale}; final training loss {info.final_loss if info.final_loss is None else round(info.final_loss, 4)} |
| training data | {public_data(info.data)} |

## Use

```python
import mteb
from sentence_transformers import SentenceTransformer

model = {load}
documents = model.encode_document(["A man is playing a guitar."])           # no instruction
queries = model.encode_query(["guitar player"], prompt_name="STSBenchmark")  # the task's instruction
queries = model.encode_query(["guitar player"], prompt="Retrieve semantically similar text.")
# The scores `layercut evaluate` measured: mteb picks each task's instruction from the prompts.
results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))
```

{why}
Inputs are rendered by the embedding template in `sentence_bert_config.json`: the chat-template
prefix, a query's task instruction (the prompt) and `{info.prompt.instruction_separator}`, the stripped
text{", then the closing template" if info.prompt.pool_closing_tokens else ""}. The prompts in
`config_sentence_transformers.json` are the task instructions keyed as mteb 2 looks them up
(`<task>` for queries and symmetric tasks, an empty `<task>-document` for documents).
With plain transformers: `AutoModel.from_pretrained(dir)` gives the backbone.
"""


class EmbeddingWriter:
    """Writes the embedding model's own files (``ArtifactWriter``); reads ``pooling``,
    ``prompt``, ``loss_scale`` and ``instructions`` of the ``ArtifactInfo``."""

    name = "contrastive"

    def write(self, staging: Path, model, tokenizer, info: ArtifactInfo) -> dict[str, Any]:
        formatter = PromptFormatter(tokenizer, info.prompt)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(staging)
        _sentence_transformers_files(staging, formatter, info, model.config.hidden_size,
                                     info.instructions or {})
        # The wrapper as rendered now: evaluation uses it instead of rendering the template
        # again (a dated template, or a later tokenizer revision, would render another).
        return {"pooling": info.pooling, "prompt": asdict(formatter.recorded())}

    def card(self, info: ArtifactInfo) -> str:
        return model_card(info)


EMBEDDING = EmbeddingWriter()

"""The product of stage 2: a standard embedding-model (or text-classifier) directory.

Contrastive objective:
- a plain transformers model (the cut backbone with LoRA merged; ``AutoModel.from_pretrained``),
  its tokenizer (right padding, so plain transformers code needs no position ids),
- sentence-transformers files: ``modules.json`` (Transformer -> Pooling), the Transformer's
  embedding template (chat mode: the model sees exactly layercut's input), the task instructions
  as prompts keyed the way mteb 2 picks them; ``last_token`` artifacts use sentence-transformers'
  own modules only (a plain ``SentenceTransformer(dir)``), ``mean``/``weighted_mean`` ones one
  text-span module pair (``layercut_modules.py``, from tasks/export/st_modules.py, which says why; load
  with ``trust_remote_code=True``),
- ``layercut.json`` (how layercut formats and pools inputs for this model) and a model card.

Classification objective: the cut causal LM with its LM head (``AutoModelForCausalLM``), its
tokenizer (left padding), ``layercut.json`` with the template, label names and verbalizers, and a
model card.

The directory is built beside the target and renamed into place: never seen half written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError
from tasks.model.layer_selection import LayerSelection
from tasks.model.prompts import PromptConfig, PromptFormatter

LAYERCUT_FILE = "layercut.json"
ST_MODULES_FILE = "layercut_modules.py"  # tasks/export/st_modules.py, copied
POOLING_DIR = "1_Pooling"


@dataclass(frozen=True)
class ArtifactInfo:
    base_model: str
    base_model_path: str
    layers: int
    total_layers: int
    parameters: int
    parameters_full: int
    pooling: str | None  # contrastive only
    prompt: PromptConfig | None  # contrastive only
    training: dict[str, Any]
    lora: dict[str, Any] | None  # None: full fine-tuning
    loss_scale: float | None  # contrastive only
    final_loss: float | None
    steps_done: int
    workers: int
    data: str
    objective: str = "contrastive"
    classification: dict[str, Any] | None = None  # template, label_names, verbalizers, ...
    # Task instructions for queries (contrastive): the artifact's sentence-transformers prompts.
    instructions: dict[str, str] | None = None
    # The base model's layers kept, when not its first ``layers`` (tasks/model/layer_selection.py).
    kept_layers: tuple[int, ...] | None = None

    @property
    def selection(self) -> LayerSelection:
        if self.kept_layers is None:
            return LayerSelection.prefix(self.layers, self.total_layers)
        return LayerSelection(tuple(self.kept_layers), self.total_layers)

    @property
    def removed_pct(self) -> float:
        return round(100.0 * (1 - self.parameters / self.parameters_full), 2)


def read_layercut_file(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / LAYERCUT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or Path(name).expanduser().exists()


def public_base_model(base_model: str) -> tuple[str, str | None, str | None]:
    """How a model card names ``base_model`` without local paths: (text for the card, hub id for
    the ``base_model`` front matter or None, license or None). A built-in name is its public model
    (``BUILTIN_ORIGINS``); a local folder is named by its folder name, with the license its own
    card declares; anything else is a hub id."""
    from tasks.model.models import BUILTIN_ORIGINS

    if base_model in BUILTIN_ORIGINS:
        hub_id, license_id, ships = BUILTIN_ORIGINS[base_model]
        return f"`{hub_id}` ({ships})", hub_id, license_id
    if _looks_local(base_model):
        path = Path(base_model).expanduser()
        return f"a local model (`{path.name}`)", None, _declared_license(path)
    return f"`{base_model}`", base_model, None


def _declared_license(model_dir: Path) -> str | None:
    """The ``license`` of a local model's own card (README.md front matter), if it has one."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    readme = model_dir / "README.md"
    try:
        meta = metadata_load(readme) if readme.is_file() else None
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def public_data(data: str) -> str:
    """Training data as a card may name it: a hub dataset id as is, a local file by its name."""
    return f"`{Path(data).name}` (a local file)" if _looks_local(data) else f"`{data}`"


def _front_matter(library: str, pipeline: str, hub_id: str | None, license_id: str | None,
                  tags: str) -> str:
    lines = [f"library_name: {library}", f"pipeline_tag: {pipeline}"]
    lines += [f"base_model: {hub_id}"] if hub_id else []
    lines += [f"license: {license_id}"] if license_id else []
    return "---\n" + "\n".join([*lines, f"tags: [{tags}]"]) + "\n---"


def _title(base_model: str, hub_id: str | None) -> str:
    return (hub_id or base_model).rstrip("/").split("/")[-1]


def _model_card(info: ArtifactInfo) -> str:
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
    front = _front_matter("sentence-transformers", "sentence-similarity", hub_id, license_id,
                          "layercut, l3prune, sentence-transformers, feature-extraction")
    return f"""{front}
# {_title(info.base_model, hub_id)} cut to {info.layers} of {info.total_layers} layers (layercut)

A text encoder made by layercut with L3Prune ("Large Language Models Are Overparameterized Text
Encoders", 2024): {info.selection.describe("decoder layers")} of {base},
fine-tuned with LoRA on a contrastive (hard-negative InfoNCE) objective, adapters merged.

| | |
|---|---|
| base model | {base} |
| license | {license_id or "the base model's"} |
| layers kept | {info.selection.of_total()} |
| parameters | {info.parameters:,} of {info.parameters_full:,} ({info.removed_pct:.1f}% removed) |
| pooling | {info.pooling} over {span}; the chat-template prefix and the instruction are not pooled |
| training | {info.steps_done} steps, lr {training['learning_rate']}, warmup {training['warmup_steps']}, {training['schedule']} schedule, batch {training['batch_size']} x {info.workers} workers, seed {training['seed']} |
| LoRA | {_lora_line(info)} |
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


def _lora_line(info: ArtifactInfo) -> str:
    if info.lora is None:
        return "none: full fine-tuning"
    return f"r {info.lora['r']}, alpha {info.lora['alpha']}, dropout {info.lora['dropout']}"


def _classifier_card(info: ArtifactInfo) -> str:
    training, task = info.training, info.classification
    words = "; ".join(f"{name}: {', '.join(w)}" for name, w in
                      zip(task["label_names"], task["verbalizers"]))
    base, hub_id, license_id = public_base_model(info.base_model)
    front = _front_matter("transformers", "text-generation", hub_id, license_id,
                          "layercut, layer-pruning, prompt-based-fine-tuning, text-classification")
    return f"""{front}
# {_title(info.base_model, hub_id)} cut to {info.layers} of {info.total_layers} layers, prompt-tuned classifier (layercut)

{info.selection.describe("decoder layers").capitalize()} of {base} with its LM head,
fine-tuned for prompt-based text classification as in "Why Lift so Heavy? Slimming Large
Language Models by Cutting Off the Layers" (Yuan et al., 2024).

| | |
|---|---|
| base model | {base} |
| license | {license_id or "the base model's"} |
| layers kept | {info.selection.of_total()} |
| parameters | {info.parameters:,} of {info.parameters_full:,} ({info.removed_pct:.1f}% removed) |
| template | `{task['template']}` |
| verbalizers | {words} |
| training | {info.steps_done} steps, lr {training['learning_rate']}, warmup {training['warmup_steps']}, batch {training['batch_size']} x {info.workers} workers, seed {training['seed']}; loss over {task['loss']}; final loss {info.final_loss if info.final_loss is None else round(info.final_loss, 4)} |
| LoRA | {_lora_line(info)} |
| training data | {public_data(info.data)} |

## Use

Render the text into the template, then compare the next-token probabilities of the label words
(several tokens: the product of their probabilities; several words: the sum); the highest wins.
`layercut evaluate-classifier --model <dir>` does this and reports accuracy and macro-F1.
"""


def export_from_checkpoint(spec, checkpoint, target: Path, info: ArtifactInfo) -> Path:
    """``export_artifact`` from the trained weights inside a Ray Train checkpoint (local or
    remote): the adapter, or the whole model after full fine-tuning."""
    with checkpoint.as_directory() as directory:
        adapter = Path(directory) / "adapter"
        return export_artifact(spec, adapter if adapter.is_dir() else Path(directory) / "weights",
                               target, info)


def _trained_model(spec, trained_dir: Path):
    """(model with the trained weights, tokenizer): an adapter merged into the cut model, or the
    fully fine-tuned model as saved."""
    from dataclasses import replace

    from tasks.model.models import ModelSource

    if (trained_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tokenizer = spec.load()
        return PeftModel.from_pretrained(model, str(trained_dir)).merge_and_unload(), tokenizer
    model = replace(spec, source=ModelSource(str(trained_dir), True), layers=None,
                    revision=None).load_model()
    return model, spec.load_tokenizer()


def export_artifact(spec, trained_dir: Path, target: Path, info: ArtifactInfo) -> Path:
    """Merge the adapter into the cut model (or take the fully fine-tuned one) and write the
    artifact directory ``target``."""
    merged, tokenizer = _trained_model(spec, Path(trained_dir))
    target = Path(target)
    # Swapped in whole: a rerun, or a reader, never sees half an export (a previous one is replaced).
    with staged_directory(target) as staging:
        merged.save_pretrained(staging)
        layercut = {"format": 1, "objective": info.objective, "base_model": info.base_model,
                    "layers": info.layers, "total_layers": info.total_layers,
                    "parameters": info.parameters, "parameters_full": info.parameters_full,
                    "final_loss": info.final_loss, "steps": info.steps_done}
        if not info.selection.is_prefix:  # which base layers layers 0..n-1 are
            layercut["kept_layers"] = list(info.selection.indices)
        if info.objective == "classification":
            # Prompts end at the last position (tasks.classification.verbalizer).
            tokenizer.padding_side = "left"
            tokenizer.save_pretrained(staging)
            layercut["classification"] = info.classification
            (staging / "README.md").write_text(_classifier_card(info))
        else:
            formatter = PromptFormatter(tokenizer, info.prompt)
            tokenizer.padding_side = "right"
            tokenizer.save_pretrained(staging)
            _sentence_transformers_files(staging, formatter, info, merged.config.hidden_size,
                                         info.instructions or {})
            # The wrapper as rendered now: evaluation uses it instead of rendering the template
            # again (a dated template, or a later tokenizer revision, would render another).
            layercut.update(pooling=info.pooling, prompt=asdict(formatter.recorded()))
            (staging / "README.md").write_text(_model_card(info))
        (staging / LAYERCUT_FILE).write_text(json.dumps(layercut, indent=2))
    return target

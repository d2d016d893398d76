"""Config sections shared by the stages: model, encoder, training triplets, Ray workers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import StrictModel
from tasks.classification.classification_presets import PRESETS
from tasks.model.depth import Depth
from tasks.model.models import DEFAULT_MODEL, ModelSource, ModelSpec
from tasks.model.prompts import PromptConfig
from tasks.training.fields import FIELD_ALIASES


class ModelSection(StrictModel):
    name_or_path: str = DEFAULT_MODEL  # built-in name, hub id, local HF directory or .gguf file
    revision: str | None = None
    trust_remote_code: bool = False  # runs code from the model repository: opt in explicitly
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 GPU, fp32 CPU
    # sdpa uses flash kernels on GPU by itself; flash_attention_2 needs the flash-attn package.
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    device: str = "auto"

    def slug(self) -> str:
        """The model's last path component, safe as a file name (run dirs, result folders)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.name_or_path).name).strip("-")

    def spec(self, source: ModelSource, layers: Depth | None = None) -> ModelSpec:
        return ModelSpec(source=source, layers=layers, dtype=self.dtype, device=self.device,
                         attn_implementation=self.attn_implementation,
                         trust_remote_code=self.trust_remote_code, revision=self.revision)


class EncoderSection(StrictModel):
    pooling: Literal["weighted_mean", "mean", "last_token"] = "weighted_mean"
    max_length: int = Field(512, ge=8)
    use_chat_template: bool = True
    system_prompt: str | None = None  # None: no system turn (a template's default is dropped)
    instruction_separator: str = "; "
    # Pooled tokens: the text only (false), or the text plus the closing chat-template tokens
    # after it (true: the official L3Prune/LLM2Vec rule, set in the four paper configs).
    pool_closing_tokens: bool = False
    # Texts per forward pass; 0 runs a whole triplet batch (3 x batch_size texts) at once.
    forward_batch_size: int = Field(0, ge=0)

    def prompt(self) -> PromptConfig:
        return PromptConfig(use_chat_template=self.use_chat_template,
                            system_prompt=self.system_prompt,
                            instruction_separator=self.instruction_separator,
                            max_length=self.max_length,
                            pool_closing_tokens=self.pool_closing_tokens)


class TripletSourceSection(StrictModel):
    """Where training triplets come from and how rows are read."""

    # The real default: a public hub dataset of triplets, read by Ray Data through hf://.
    source: str = "hf://datasets/sentence-transformers/all-nli/triplet/train-00000-of-00001.parquet"
    # Used instead of `source` when a data root (--data-root or LAYERCUT_DATA_ROOT) is set.
    local_source: str | None = "train/triplets.jsonl"
    data_root: str | None = None
    # triplets: rows with query/positive/negative and their own instruction (optional).
    # e5: a folder of <source>.jsonl files (the E5 mix as echo-embeddings lays it out); each
    # source's query instruction comes from the E5 table (tasks/training/e5_data.py).
    layout: Literal["triplets", "e5"] = "triplets"
    columns: dict[str, str] = Field(default_factory=dict)  # our field -> dataset column
    invalid_rows: Literal["skip", "fail"] = "skip"
    # A run refuses training data without instructions when evaluation prepends task
    # instructions to queries (inputs would differ between training and evaluation); true
    # acknowledges a deliberate mismatch.
    allow_instruction_mismatch: bool = False

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(FIELD_ALIASES)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; fields are {list(FIELD_ALIASES)}")
        return value


class TripletDataSection(TripletSourceSection):
    """Stage 1's sample: ``num_batches`` random batches of ``batch_size`` triplets."""

    num_batches: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)  # in-batch negatives need at least two triplets
    seed: int = 42


class LossSection(StrictModel):
    scale: float = Field(50.0, gt=0)  # cosine x scale; 50 as the official training script
    # Leave a query's false negatives out of its softmax: in-batch candidates with the same text as
    # its own positive, and positives of rows with the same query (tasks.training.loss). The count is
    # logged (training log `masked_pairs`, stage 1 selection.json `duplicates`). The paper's
    # recipe (its configs set false) scores them as negatives.
    mask_duplicate_positives: bool = True


class RayWorkersSection(StrictModel):
    address: str | None = None  # None: RAY_ADDRESS / a running cluster, else start one in-process
    num_workers: int | Literal["auto"] = "auto"  # auto: one per GPU in the cluster, else 1
    use_gpu: bool | Literal["auto"] = "auto"  # auto: when the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0)
    # An autoscaling cluster: GPUs may not exist yet, and workers wait for the nodes the
    # autoscaler adds, so the worker count and device are not read from the cluster's current
    # resources (set num_workers and use_gpu explicitly).
    wait_for_resources: bool = False

    @model_validator(mode="after")
    def _positive_workers(self):
        if self.num_workers != "auto" and self.num_workers < 1:
            raise ValueError("num_workers must be >= 1 or 'auto'")
        if self.wait_for_resources and "auto" in (self.num_workers, self.use_gpu):
            raise ValueError("with wait_for_resources, set num_workers and use_gpu explicitly "
                             "(the cluster's current resources say nothing of what will be added)")
        return self


class WorkersSection(RayWorkersSection):
    executor: Literal["ray", "local"] = "ray"  # local: in this process, no Ray at all


def classification_presets() -> dict:
    """{name: preset} of the packaged classification datasets (tasks/classification/classification_presets.py:
    read once at import, so the validators below do no I/O)."""
    return {name: dict(preset) for name, preset in PRESETS.items()}


class ClassificationSection(StrictModel):
    """A labelled dataset and the prompt a causal LM classifies it with (the classification
    objective). ``dataset`` names a packaged preset (tasks/classification/classification_datasets.yaml) whose
    fields fill every field this section leaves unset."""

    dataset: str | None = "sst2"
    source: str | None = None  # path or URI with {split}; hf://datasets/... for the hub
    local_source: str | None = None  # under the data root, with {split}
    data_root: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)  # text / label / label_text -> column
    hub_columns: dict[str, str] = Field(default_factory=dict)  # the same, for `source` only
    label_names: list[str] | None = None  # None: from the data's label_text column
    template: str | None = None  # with {text}, e.g. "Review: {text}\nSentiment:"
    verbalizers: dict[str, list[str]] | None = None  # label name -> label words
    train_split: str = "train"
    test_split: str = "test"
    max_length: int = Field(256, ge=8)  # prompt tokens; the text is cut to fit
    loss: Literal["classes", "vocabulary"] = "classes"
    invalid_rows: Literal["skip", "fail"] = "skip"

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        name = data.get("dataset", "sst2")
        if name is None:
            return data
        presets = classification_presets()
        if name not in presets:
            raise ValueError(f"unknown dataset {name!r}; packaged: {', '.join(presets)} "
                             "(or set dataset: null and give source, labels and template)")
        return {**presets[name], **data}

    @model_validator(mode="after")
    def _complete(self):
        from tasks.classification.verbalizer import TEXT_SLOT

        if self.source is None and self.local_source is None:
            raise ValueError("give a source (or local_source) for the classification data")
        if self.template is None or self.template.count(TEXT_SLOT) != 1:
            raise ValueError(f"the template must hold the {TEXT_SLOT} slot exactly once: "
                             f"{self.template!r}")
        if not self.verbalizers:
            raise ValueError("give verbalizers: label name -> label words")
        if self.label_names is not None:
            from tasks.classification.verbalizer import ClassificationPrompt

            try:  # a label without words, or words for an unknown label
                ClassificationPrompt.from_mapping(self.template, self.label_names, self.verbalizers)
            except Exception as exc:  # noqa: BLE001 - LayercutError as a validation error
                raise ValueError(str(exc)) from exc
        return self

    def label(self) -> str:
        return self.dataset or Path(self.source or self.local_source or "data").name

    def split_path(self, split: str) -> tuple[str, dict[str, str]]:
        """(path or URI of ``split``, column mapping): under the data root when one is set."""
        from tasks.training.data import resolve_source

        local_source = self.local_source.format(split=split) if self.local_source else None
        source = (self.source or "").format(split=split)
        path = resolve_source(source, local_source, self.data_root)
        columns = self.columns if path != source else {**self.hub_columns, **self.columns}
        return path, columns

    def prompt(self, label_names: list[str]):
        from tasks.classification.verbalizer import ClassificationPrompt

        return ClassificationPrompt.from_mapping(self.template, label_names, self.verbalizers,
                                                 self.max_length)

"""The product of stage 2: the exported model directory, the same mechanics for every route.

The cut model with its trained weights (LoRA merged, or the fully fine-tuned model), then what
its kind of artifact adds, written by an ``ArtifactWriter``: the tokenizer as that kind pads,
its own files, its keys of ``layercut.json`` and the model card. The contrastive route's
embedding model is tasks/export/embedding.py, the classification route's classifier
tasks/export/classifier.py; a route hands its writer in ``ArtifactInfo.writer`` (the route
packages do, pipelines/routes/<route>/training.py ``artifact_fields``), so a new kind of artifact
needs no change here. ``layercut.json`` starts with the keys every artifact has (how much of the
base model it is), then the writer's.

The directory is built beside the target and renamed into place: never seen half written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError
from tasks.export.classifier import CLASSIFIER
from tasks.export.embedding import EMBEDDING
from tasks.model.layer_selection import LayerSelection
from tasks.model.prompts import PromptConfig

LAYERCUT_FILE = "layercut.json"


class ArtifactWriter(Protocol):
    """One kind of artifact: what it adds to the cut model in the export's staging directory."""

    name: str  # the objective whose artifacts it writes (layercut.json's "objective")

    def write(self, staging: Path, model, tokenizer, info: ArtifactInfo) -> dict[str, Any]:
        """Save ``tokenizer`` (padded as this kind needs) and this kind's own files into
        ``staging`` (the merged ``model`` is saved already); return its keys of layercut.json,
        in order, after the ones every artifact has."""

    def card(self, info: ArtifactInfo) -> str:
        """The model card (README.md)."""


# The writers of the routes layercut ships, by objective: the export of an ``ArtifactInfo`` that
# names no writer (a caller outside the routes, e.g. a test) finds its objective's here.
BUILT_IN_WRITERS: dict[str, ArtifactWriter] = {writer.name: writer for writer in (EMBEDDING, CLASSIFIER)}


@dataclass(frozen=True)
class ArtifactInfo:
    """What the export records of a trained model. The fields up to ``data`` are every
    artifact's; the ones after ``objective`` are what one kind's writer reads (None where
    another kind is written) and the writer itself."""

    base_model: str
    base_model_path: str
    layers: int
    total_layers: int
    parameters: int
    parameters_full: int
    training: dict[str, Any]
    lora: dict[str, Any] | None  # None: full fine-tuning
    final_loss: float | None
    steps_done: int
    workers: int
    data: str
    objective: str = "contrastive"
    # The base model's layers kept, when not its first ``layers`` (tasks/model/layer_selection.py).
    kept_layers: tuple[int, ...] | None = None
    # The embedding model's (tasks/export/embedding.py): pooling, input format, InfoNCE scale,
    # and task instructions for queries (its sentence-transformers prompts).
    pooling: str | None = None
    prompt: PromptConfig | None = None
    loss_scale: float | None = None
    instructions: dict[str, str] | None = None
    # The classifier's (tasks/export/classifier.py): template, label_names, verbalizers, ...
    classification: dict[str, Any] | None = None
    # Who writes this kind of artifact; None: the built-in writer of ``objective``.
    writer: ArtifactWriter | None = None

    @property
    def selection(self) -> LayerSelection:
        if self.kept_layers is None:
            return LayerSelection.prefix(self.layers, self.total_layers)
        return LayerSelection(tuple(self.kept_layers), self.total_layers)

    @property
    def removed_pct(self) -> float:
        return round(100.0 * (1 - self.parameters / self.parameters_full), 2)

    def artifact_writer(self) -> ArtifactWriter:
        """The writer of this artifact's kind.

        Raises:
            LayercutError: none given and no built-in one for the objective.
        """
        if self.writer is not None:
            return self.writer
        if self.objective not in BUILT_IN_WRITERS:
            raise LayercutError(f"no artifact writer for objective {self.objective!r}: pass one as "
                                "ArtifactInfo.writer")
        return BUILT_IN_WRITERS[self.objective]


def read_layercut_file(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / LAYERCUT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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
    artifact directory ``target``: the model, then what its writer (``info.artifact_writer()``)
    adds, layercut.json and the card."""
    writer = info.artifact_writer()
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
        layercut.update(writer.write(staging, merged, tokenizer, info))
        (staging / "README.md").write_text(writer.card(info))
        (staging / LAYERCUT_FILE).write_text(json.dumps(layercut, indent=2))
    return target

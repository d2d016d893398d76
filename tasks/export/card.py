"""The parts of an artifact's model card every kind of artifact shares (tasks/export/embedding.py,
tasks/export/classifier.py, a route's own writer): how the base model and the training data are
named without local paths, the front matter, the title and the LoRA line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.export.artifact import ArtifactInfo


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


def front_matter(library: str, pipeline: str, hub_id: str | None, license_id: str | None,
                 tags: str) -> str:
    """The card's YAML front matter, as the Hub reads it (no base_model or license when unknown)."""
    lines = [f"library_name: {library}", f"pipeline_tag: {pipeline}"]
    lines += [f"base_model: {hub_id}"] if hub_id else []
    lines += [f"license: {license_id}"] if license_id else []
    return "---\n" + "\n".join([*lines, f"tags: [{tags}]"]) + "\n---"


def title(base_model: str, hub_id: str | None) -> str:
    """The model's short name for the card's heading: the last part of its hub id or path."""
    return (hub_id or base_model).rstrip("/").split("/")[-1]


def lora_line(info: ArtifactInfo) -> str:
    """The card's LoRA row: its settings, or full fine-tuning."""
    if info.lora is None:
        return "none: full fine-tuning"
    return f"r {info.lora['r']}, alpha {info.lora['alpha']}, dropout {info.lora['dropout']}"


def cut_model_rows(info: ArtifactInfo, base: str, license_id: str | None) -> str:
    """The rows every card's table starts with: the base model (as ``public_base_model`` names
    it), its license, the layers kept and the parameters left."""
    license_text = license_id or "the base model's"
    return (f"| base model | {base} |\n"
            f"| license | {license_text} |\n"
            f"| layers kept | {info.selection.of_total()} |\n"
            f"| parameters | {info.parameters:,} of {info.parameters_full:,} ({info.removed_pct:.1f}% removed) |")

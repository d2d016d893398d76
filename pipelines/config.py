"""Typed stage configs: YAML files plus ``key.sub=value`` overrides, validated on load.

Every config model forbids unknown keys, so a typo is an error, never a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationError

from tasks.depth import Depth
from tasks.errors import LayercutError
from tasks.trees import merge_trees

CONFIG_DIR = Path(__file__).parent / "configs"
Config = TypeVar("Config", bound="StrictModel")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def find_config(name_or_path: str, stage: str) -> Path:
    """A YAML path, or the name of a packaged config of ``stage`` (e.g. 'llama3-8b')."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = CONFIG_DIR / stage / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    choices = ", ".join(sorted(p.stem for p in (CONFIG_DIR / stage).glob("*.yaml")))
    raise LayercutError(f"config {name_or_path!r} not found: not a file, nor one of: {choices}")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LayercutError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LayercutError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def load_config(model: type[Config], path: Path | None, overrides: list[str] = (),
                extra: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (YAML), apply ``extra`` (CLI flags) and overrides, and validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LayercutError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, dict):
            raise LayercutError(f"config {path} is not a mapping of keys to values")
        tree = loaded
    tree = merge_trees(tree, extra or {})
    tree = merge_trees(tree, parse_overrides(list(overrides)))
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        source = f" in {path}" if path else ""
        raise LayercutError(f"invalid config{source}: {describe_validation_error(exc)}") from exc


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _depth(value: Any) -> Depth:
    try:
        return Depth.parse(value)
    except LayercutError as error:  # pydantic names the key for a ValueError
        raise ValueError(str(error)) from None


def _dump_depth(depth: Depth | int) -> int | str:
    # model_copy(update=...) skips validation, so a plain layer count may arrive here.
    depth = Depth.parse(depth)
    return depth.value if depth.kind == "count" else str(depth)


# A depth in any config (tasks/depth.py): 8, "keep:0.7" or "prune:0.3"; written back as that text.
DepthSetting = Annotated[Depth, PlainValidator(_depth), PlainSerializer(_dump_depth)]

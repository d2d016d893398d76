"""Typed stage configs: YAML files plus ``key.sub=value`` overrides, validated on load.

Every config model forbids unknown keys, so a typo is an error, never a silent default.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationError

from tasks.errors import LayercutError
from tasks.model.depth import Depth
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


_NULLS = ("", "null", "Null", "NULL", "~")  # YAML's spellings of null


def _annotation_at(model: type[BaseModel] | None, parts: list[str]) -> Any:
    """The type annotation of the config key ``parts`` in ``model``, or None when unknown.

    Walks nested config sections, ``dict[str, V]`` values, and trees that a section says are
    laid over another config (``override_tree_model``, as the sweep's per-stage overrides).
    """
    annotation: Any = model
    for depth, part in enumerate(parts):
        annotation = _without_none(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            hook = getattr(annotation, "override_tree_model", None)
            annotation = (hook(part) if hook else None) or field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        elif _takes_text(annotation)[0] or annotation in (int, float, bool):
            raise LayercutError(f"override key {'.'.join(parts)!r}: "
                                f"{'.'.join(parts[:depth])!r} is a value, not a section")
        else:
            return None
    return annotation


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _takes_text(annotation: Any) -> tuple[bool, bool]:
    """(the key holds plain text, it may also be null) for an annotation."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    nullable = type(None) in options
    rest = [a for a in options if a is not type(None)]

    def text(option: Any) -> bool:
        if option is str:
            return True
        return get_origin(option) is Literal and all(isinstance(v, str) for v in get_args(option))

    return bool(rest) and all(text(a) for a in rest), nullable


def parse_override(item: str, model: type[BaseModel] | None = None) -> tuple[str, Any]:
    """(dotted key, value) of one ``key.sub=value`` override, or a one-line error naming it.

    A key whose config field holds text takes the value as it is written (``Task: x`` and
    ``[draft] x`` are text, not YAML); its YAML null spellings still mean null when the field
    may be null. Other values are YAML (numbers, booleans, lists, mappings).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise LayercutError(f"override {item!r} is not of the form key.sub=value")
    is_text, nullable = _takes_text(_annotation_at(model, key.split(".")))
    if is_text and not (nullable and raw.strip() in _NULLS):
        return key, raw
    if not raw.strip():
        return key, None
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LayercutError(f"override {item!r}: the value is not valid YAML ({reason}); "
                            "quote it if it is text") from None


def parse_overrides(items: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """A config tree from ``key.sub=value`` overrides, typed by ``model``'s fields."""
    tree: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item, model)
        _set_dotted(tree, key, value)
    return tree


def describe_validation_error(error: ValidationError, overrides: list[str] = ()) -> str:
    """One line for all problems; a problem in an overridden key names the override."""
    by_key = {item.partition("=")[0].strip(): item for item in overrides}
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        source = next((by_key[k] for k in by_key if where == k or where.startswith(k + ".")
                       or k.startswith(where + ".")), None)
        parts.append(f"{where}: {message}" + (f" (from override {source!r})" if source else ""))
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
    tree = merge_trees(tree, parse_overrides(list(overrides), model))
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        described = describe_validation_error(exc, list(overrides))
        # The file is named only when it, not a command-line override or flag, holds the bad value.
        flagged = all(".".join(map(str, item["loc"])) in _leaf_keys(extra or {}) for item in exc.errors())
        source = f" in {path}" if path and "(from override" not in described and not flagged else ""
        raise LayercutError(f"invalid config{source}: {described}") from exc


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys of a config tree's values ({"data": {"root": x}} -> {"data.root"})."""
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= _leaf_keys(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
    return keys


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


# A depth in any config (tasks/model/depth.py): 8, "keep:0.7", "prune:0.3" or "keep-indices:0-2,5-6" (or a
# list of layer indices); written back as that text.
DepthSetting = Annotated[Depth, PlainValidator(_depth), PlainSerializer(_dump_depth)]

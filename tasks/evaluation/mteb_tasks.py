"""mteb tasks by name or preset, read from a local mirror when a data root is set."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tasks.errors import LayercutError

PRESETS_FILE = Path(__file__).with_name("mteb_presets.yaml")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@lru_cache(maxsize=1)
def presets() -> dict[str, list[str]]:
    """Preset name -> mteb task names, from mteb_presets.yaml."""
    import yaml

    return yaml.safe_load(PRESETS_FILE.read_text())


# The classification datasets of the second use case
# (tasks/classification/classification_datasets.yaml) as mteb classification tasks: the same
# logistic-regression probe mteb runs on any classification task, on the embeddings of a
# contrastive encoder, so both routes are scored on the same data.
PROBE_PREFIX = "Layercut"


@lru_cache(maxsize=1)
def probe_tasks() -> dict[str, dict]:
    """mteb task name (e.g. LayercutSST2) -> the dataset preset it reads."""
    from tasks.classification.classification_presets import PRESETS

    return {f"{PROBE_PREFIX}{Path(preset['local_source']).parent.name}": {"dataset": name, **preset}
            for name, preset in PRESETS.items()}


def probe_task_name(dataset: str) -> str:
    return next(name for name, preset in probe_tasks().items() if preset["dataset"] == dataset)


def _probe_task(name: str, data_root: str | None):
    """An mteb classification task (mteb's own AbsTaskClassification and evaluator) over a
    layercut classification dataset: the local mirror's folder, or the hub dataset."""
    import mteb
    from mteb.abstasks.classification import AbsTaskClassification

    preset = probe_tasks()[name]
    if data_root:
        folder = Path(data_root).expanduser().resolve() / Path(preset["local_source"]).parent
        if not folder.is_dir():
            raise LayercutError(f"task {name} is not in the local mirror: expected folder {folder}")
        dataset, label_column = {"path": str(folder), "revision": "local"}, "label"
    else:  # hf://datasets/<org>/<name>@~parquet/... -> the hub dataset id
        repo = preset["source"].removeprefix("hf://datasets/").split("@")[0].split("/")
        dataset = {"path": "/".join(repo[:2]), "revision": "main"}
        label_column = preset.get("hub_columns", {}).get("label", "label")
    template = mteb.get_task("ImdbClassification").metadata  # an English single-label task
    metadata = template.model_copy(update={
        "name": name, "dataset": dataset, "eval_splits": ["test"], "main_score": "accuracy",
        "description": f"{preset['dataset']} ({', '.join(preset['label_names'])}), layercut's "
                       "classification dataset as an mteb logistic-regression probe",
        "reference": None})
    task_class = type(name, (AbsTaskClassification,), {
        "metadata": metadata, "label_column_name": label_column,
        "_undersample_data": _undersample_reading_labels_once})
    return task_class()


class _LabelsReadOnce:
    """A datasets.Dataset as mteb's ``_undersample_data`` uses it (its length, a column, ``select``),
    whose column comes back as a list read once through Arrow. mteb indexes the label column one
    row at a time, which datasets 4-5 answers by slicing the Arrow table per row (about 0.2-0.3 ms):
    2 s per experiment on SST-2's 6,907 training rows, 20 s for mteb's 10 experiments of one probe."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, column: str) -> list:
        return self._dataset.with_format("arrow")[column].to_pylist()

    def select(self, indices):
        return self._dataset.select(indices)


def _undersample_reading_labels_once(self, dataset, experiment_num: int, idxs=None):
    """mteb's own undersampling (the same draw, the same rows), over the label column read once."""
    from mteb.abstasks.classification import AbsTaskClassification

    return AbsTaskClassification._undersample_data(self, _LabelsReadOnce(dataset), experiment_num, idxs)


@lru_cache(maxsize=1)
def known_task_names() -> tuple[str, ...]:
    import mteb

    tasks = mteb.get_tasks(exclude_superseded=False, exclude_private=False)
    return tuple(sorted({task.metadata.name for task in tasks} | set(probe_tasks())))


def _is_mteb_task(name: str) -> bool:
    """Whether mteb's registry has a task of this name. One task is built, not all of them:
    ``known_task_names`` builds mteb's ~1,800 tasks (5 s), which every evaluation paid before."""
    import mteb

    try:
        mteb.get_task(name)
    except KeyError:
        return False
    return True


def resolve_task_names(items: list[str]) -> list[str]:
    """Expand presets, check names against mteb's registry (suggesting close names)."""
    if not items:
        raise LayercutError(f"the task list is empty; name tasks or a preset ({', '.join(presets())})")
    names: list[str] = []
    for item in items:
        if item in presets():
            names.extend(presets()[item])
        elif item in probe_tasks() or _is_mteb_task(item):
            names.append(item)
        else:
            close = difflib.get_close_matches(item, known_task_names(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise LayercutError(f"unknown mteb task {item!r}{hint}")
    return list(dict.fromkeys(names))


def _check_layout(task, folder: Path) -> None:
    splits = task.eval_splits
    if task.metadata.type in ("Retrieval", "Reranking"):
        missing = [part for part in ("corpus", "queries") if not (folder / part).is_dir()]
        if missing:
            raise LayercutError(f"mirror folder {folder} is not in the retrieval layout: "
                                f"missing {', '.join(p + '/' for p in missing)}")
        return
    present = {p.stem for p in folder.glob("*.parquet")} | {p.name for p in folder.iterdir() if p.is_dir()}
    if not any(split in present for split in splits):
        raise LayercutError(f"mirror folder {folder} has none of the evaluation splits "
                            f"{splits} as <split>.parquet")


@dataclass(frozen=True)
class TaskSelection:
    """Which part of each task is scored: MTEB(eng)'s choice by default, the English subsets
    (STS17 en-en, MassiveIntentClassification en) of the test split, so a multilingual task does
    not average 11 language pairs or run 51 languages x 2 splits.

    ``splits``: the evaluation splits to score, where the task has them (a task without any of
    them keeps its own). ``languages``: ISO 639-3 codes; a subset is kept when all its languages
    are among them (mteb's exclusive language filter). ``task_splits`` / ``task_subsets``: per-task
    choices that win over both (e.g. {"STS17": ["en-en", "en-de"]}).
    """

    languages: tuple[str, ...] = ("eng",)
    splits: tuple[str, ...] = ("test",)
    task_splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    task_subsets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def apply(self, name: str):
        """mteb's task ``name`` restricted to the chosen splits and subsets (``task.eval_splits``,
        ``task.hf_subsets``). Raises LayercutError for a split or subset the task does not have."""
        import mteb

        task = mteb.get_task(name)
        available = list(task.metadata.eval_splits)
        splits = list(self.task_splits.get(name) or [s for s in self.splits if s in available] or available)
        unknown = [split for split in splits if split not in available]
        if unknown:
            raise LayercutError(f"task {name} has no split {', '.join(unknown)} (it has {', '.join(available)})")
        task.filter_eval_splits(splits)
        try:  # mteb's own filters, as mteb.get_task applies them
            if name in self.task_subsets:
                return task.filter_languages(None, hf_subsets=list(self.task_subsets[name]))
            return task.filter_languages(list(self.languages), exclusive_language_filter=True)
        except ValueError as error:  # mteb: no subset passes the filters
            raise LayercutError(f"task {name}: {str(error).splitlines()[0]} (set evaluate.task_subsets."
                                f"{name} or evaluate.languages)") from None


def describe_task(task) -> str:
    """One line: name, type, the splits and subsets that are scored."""
    return (f"{task.metadata.name}  {task.metadata.type}  splits: {', '.join(task.eval_splits)}  "
            f"subsets: {', '.join(task.hf_subsets)}")


def load_task(name: str, data_root: str | None = None, selection: TaskSelection | None = None):
    """The mteb task object, restricted to ``selection`` (default: English, test split); with a
    data root, reading ``<data_root>/<name>`` offline."""
    data_root = data_root or os.environ.get("LAYERCUT_DATA_ROOT") or None
    if name in probe_tasks():
        if data_root:
            os.environ.update(OFFLINE_ENV)
        return _probe_task(name, data_root)
    task = (selection or TaskSelection()).apply(name)
    if data_root is None:
        return task
    folder = Path(data_root).expanduser().resolve() / name
    if not folder.is_dir():
        raise LayercutError(f"task {name} is not in the local mirror: expected folder {folder}")
    _check_layout(task, folder)
    os.environ.update(OFFLINE_ENV)  # a mirror means no network: never let datasets try the hub
    task.metadata = task.metadata.model_copy(
        update={"dataset": {"path": str(folder), "revision": "local"}})
    return task


# Task types whose evaluation splits are plain row tables (one row = one scored example), so a
# random subset of rows is a smaller instance of the same task, scored by mteb's own evaluator.
SUBSAMPLABLE_TYPES = ("STS", "Classification")
SAMPLE_SEED = 42  # part of an evaluation's fingerprint: another seed scores other rows


def require_subsamplable(task) -> None:
    if task.metadata.type not in SUBSAMPLABLE_TYPES:
        raise LayercutError(f"max_samples_per_split works on {', '.join(SUBSAMPLABLE_TYPES)} "
                            f"tasks; {task.metadata.name} is a {task.metadata.type} task")


def subsample_task(task, max_samples: int, seed: int = SAMPLE_SEED):
    """Load ``task``'s data and keep a seeded random ``max_samples`` rows of each evaluation split
    (for quick local runs; scores then come from a subsample, not the full task)."""
    require_subsamplable(task)
    if not task.data_loaded:
        task.load_data()
    dataset = task.dataset
    flat = any(split in dataset for split in task.eval_splits)
    subsets = [dataset] if flat else list(dataset.values())  # multilingual: {subset: splits}
    for splits in subsets:
        for split in task.eval_splits:
            rows = splits.get(split) if hasattr(splits, "get") else None
            if rows is not None and len(rows) > max_samples:
                splits[split] = rows.shuffle(seed=seed).select(range(max_samples))
    return task

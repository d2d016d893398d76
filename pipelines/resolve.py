"""The resolve step at the start of a stage's run: what a config points at, read once.

Validating a config reads no file or data set (pipelines/schemas/; the packaged classification
presets are package data, tasks/classification/classification_presets.py): a section only says where its data
lives. What the data itself says (a classification data set's label names), and the settings one
section lends another (the data root), are worked out here, once, by the stage that needs them,
instead of patching the config deeper in the run.
"""

from __future__ import annotations

from pipelines.schemas.finetune import FinetuneConfig
from pipelines.sections import ClassificationSection


def finetune_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` as stage 2 runs it: for the classification objective, the data root that
    --data-root set (on ``data``) also serves the classification data, unless that section
    names its own. The caller's config is left as it is; the run records this one."""
    task = config.classification
    if config.objective != "classification" or task.data_root is not None or config.data.data_root is None:
        return config
    return config.model_copy(update={
        "classification": task.model_copy(update={"data_root": config.data.data_root})})


def label_names(section: ClassificationSection) -> list[str]:
    """The section's label names as it lists them, else the train split's label_text column
    (read through Ray Data)."""
    if section.label_names is not None:
        return list(section.label_names)
    from tasks.training.classification_data import label_names_from_data

    path, columns = section.split_path(section.train_split)
    return label_names_from_data(path, columns)

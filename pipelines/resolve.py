"""The resolve step at the start of a stage's run: what a config points at, read once.

Validating a config reads no file or data set (pipelines/schemas/; the packaged classification
presets are package data, tasks/classification/classification_presets.py): a section only says where its data
lives. What the data itself says (a classification data set's label names) is worked out here,
once, by the stage that needs it, instead of patching the config deeper in the run. The settings
one section lends another in stage 2 (the data root the classification data gets) are its
objective's route's (``TrainingRoute.resolve``, pipelines/routes/<route>/training.py).
"""

from __future__ import annotations

from pipelines.sections import ClassificationSection


def label_names(section: ClassificationSection) -> list[str]:
    """The section's label names as it lists them, else the train split's label_text column
    (read through Ray Data)."""
    if section.label_names is not None:
        return list(section.label_names)
    from tasks.training.classification_data import label_names_from_data

    path, columns = section.split_path(section.train_split)
    return label_names_from_data(path, columns)

"""The data a config section points at, read by the stage at the start of its run.

Validating a config reads no data set (pipelines/schemas/): a section only says where its data
lives; what the data itself says (here: a classification data set's label names) is read here,
once, by the stage that needs it.
"""

from __future__ import annotations

from pipelines.sections import ClassificationSection


def label_names(section: ClassificationSection) -> list[str]:
    """The section's label names as it lists them, else the train split's label_text column
    (read through Ray Data)."""
    if section.label_names is not None:
        return list(section.label_names)
    from tasks.classification_data import label_names_from_data

    path, columns = section.split_path(section.train_split)
    return label_names_from_data(path, columns)

"""The packaged classification datasets (classification_datasets.yaml beside this module): per
name, where the data lives, its label names, a template and verbalizers.

The table is package data, read once when this module is imported, like code: a config
validator that fills a section's defaults from it (pipelines/sections.py) or checks a dataset
name (pipelines/schemas/sweep.py) reads a constant, never a file.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

PRESETS_FILE = Path(__file__).with_name("classification_datasets.yaml")


def _read() -> Mapping[str, Mapping[str, Any]]:
    table = yaml.safe_load(PRESETS_FILE.read_text())
    return MappingProxyType({name: MappingProxyType(dict(preset)) for name, preset in table.items()})


# name -> {field of pipelines.sections.ClassificationSection: value}; read-only (a caller that
# wants to change one copies it: dict(PRESETS[name])).
PRESETS = _read()

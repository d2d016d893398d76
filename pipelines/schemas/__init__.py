"""The config model of each stage, one module per stage: what its YAML and overrides may say.

Validating a config does no I/O: what a data set says (its label names) and what a config
points at (an artifact's layercut.json, which names the default evaluation directory) are read
at the start of the run (pipelines/resolve.py, pipelines/evaluate.py); the packaged
classification presets that fill a section's defaults and name the sweep's datasets are package
data, read once at import (tasks/classification/classification_presets.py), so their errors still come from
loading the config. Stage modules, the sweep and the CLI import these modules; these import
only pipelines.config, pipelines.sections and tasks/.
"""

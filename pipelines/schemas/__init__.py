"""The config model of each stage, one module per stage: what its YAML and overrides may say.

Validating a config reads no data set: what a data set says (its label names) is read by the
stage at the start of its run (pipelines/resolve.py). The packaged classification presets
(tasks/classification_datasets.yaml) are still read by two validators, the section's defaults and
the sweep's dataset names: their errors must come from loading the config. Stage modules, the
sweep and the CLI import these modules; these import only pipelines.config, pipelines.sections
and tasks/.
"""

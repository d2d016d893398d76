"""The config model of each stage, one module per stage: what its YAML and overrides may say.

Inert: validating a config reads no file, data set or environment variable. The I/O a setting
implies (a preset's fields, a data set's label names) happens in the stage's resolve step
(pipelines/resolve.py) at the start of its run. Stage modules, the sweep and the CLI import these
modules; these import only pipelines.config, pipelines.sections and tasks/.
"""

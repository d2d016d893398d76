"""A decoder backbone as a cut text encoder: everything every stage does with a model.

- ``models``: loading a backbone (built-in local models, GGUF files converted once into a cached
  directory, local HF directories, hub ids), already cut to its depth;
- ``model_access``: whether this process can load a model, checked before a run schedules work;
- ``model_identity``: a model's content digest, for keying results;
- ``depth``: the four ways to write a depth; ``layer_selection``: the kept layers it resolves to;
- ``pruning``: keeping a selection of decoder layers, config included;
  ``selected_weights``: reading only a selection's weights from a checkpoint;
- ``prompts``: input formatting with the chat template, and the pooled-span mask;
  ``pooling``: pooling token states over that span;
- ``encoder``: format, run, pool; every depth's embedding in one forward pass;
- ``lora``: LoRA on every attention and MLP projection (stage 2);
- ``footprint``: encode latency and peak memory of a model (run in a Ray task by the sweep's
  trial, but the module itself does not import Ray).

None of these modules imports Ray.
"""

"""layercut's units of work and the model-level code they run, one subpackage per concern.

- ``tasks.model``: a decoder backbone as a cut text encoder: loading, depths and layer
  selections, pruning, input formatting, pooling, LoRA, what a model costs to serve;
- ``tasks.scan``: stage 1, the per-layer initial loss and the L3Prune picks;
- ``tasks.training``: stage 2, the Ray Train loop, its objectives and loss, DeepSpeed, and the
  training data (triplets, labelled texts, JSON lines, the batch plan), which stage 1 and the
  classifier read too;
- ``tasks.evaluation``: stage 3, mteb tasks and layercut's mteb encoder, the evaluation actor,
  bootstrap intervals, train/test overlap;
- ``tasks.classification``: the second route, prompt-based classification with a causal LM
  (verbalizers, the classifier unit, the packaged datasets);
- ``tasks.export``: the artifact stage 2 writes, and the scores stage 3 puts in its card.

Beside them, shared by all (and by ``pipelines``): ``tasks.errors`` (``LayercutError``),
``tasks.atomic_files`` (files that appear whole or not at all), ``tasks.object_store`` (URIs,
the manifest of a directory uploaded whole, a model directory fetched from a store) and
``tasks.trees`` (merging config trees).

Imports point one way: ``model`` needs only the shared modules; ``classification`` and
``export`` build on ``model``; ``training`` on ``model`` and ``classification`` (the
verbalizer loss); ``scan`` on ``model`` and ``training`` (it measures stage 2's loss);
``evaluation`` on ``model`` and ``classification`` (the packaged datasets as mteb probes).
``tasks`` never imports ``pipelines``.

The model code is plain PyTorch / transformers and runs without a Ray cluster. Where a unit runs
on Ray, the Ray part sits at its edge; each subpackage's docstring names its modules that import
Ray. At module level only ``tasks.scan.layer_loss_task``, ``tasks.evaluation.evaluation_task``
and ``tasks.training.json_lines`` do (with ``tasks.training.data`` and
``tasks.training.classification_data``, which import ``json_lines``); every other module imports
without Ray.
"""

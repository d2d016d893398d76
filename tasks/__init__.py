"""layercut's units of work and the model-level code they run.

The model code (pruning, pooling, prompts, losses, LoRA, export) is plain PyTorch / transformers
and runs without a Ray cluster. Where a unit runs on Ray, the Ray part sits at its edge:

- ``tasks.layer_loss_task``: stage 1's scan of one batch, a Ray task;
- ``tasks.evaluation_task``: the evaluation actor (``EvaluationWorker``) and the pooled task;
- ``tasks.training``: the Ray Train worker loop (context, checkpoints, metrics);
- ``tasks.data``, ``tasks.json_lines``, ``tasks.corpus_encoding``: Ray Data readers and the
  corpus encoding pipeline;
- ``tasks.mteb_model``: a progress bar that reports through Ray when it runs in a Ray worker.

Each of them imports Ray inside the function that needs it (``evaluation_task`` and
``json_lines`` at module level), so the rest of ``tasks`` imports without it.
"""

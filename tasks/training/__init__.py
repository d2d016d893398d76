"""Stage 2: the training loop each Ray Train worker runs, what it optimises, and its data.

The loop and what it optimises:

- ``train_loop``: the Ray Train worker loop (DeepSpeed + LoRA or full fine-tuning, checkpoints,
  resume, metrics); it imports Ray inside the functions that run in a Train worker;
- ``objectives``: the pluggable objectives (contrastive InfoNCE, prompt-based classification);
- ``loss``: hard-negative InfoNCE with false-negative masking (also stage 1's scan loss);
- ``deepspeed_config``: the DeepSpeed JSON, generated from the run config, optionally overlaid;
- ``batch_plan``: the order of training batches, task-homogeneous and the same for any layout.

The data, read through Ray Data (stage 1 samples its triplets and the classifier reads its test
split through the same readers):

- ``json_lines``: JSON lines one line at a time, one bad line one bad row; it imports Ray Data
  at module level;
- ``data``: training triplets (resolve the source, validate rows, sample reproducibly); it
  imports ``json_lines``, so Ray, at import, and ``ray.data`` in its reader;
- ``e5_data``: the E5 mix's layout and instruction table (no Ray);
- ``classification_data``: labelled texts for the classification objective, read through
  ``data``'s reader (Ray at import through ``json_lines``).

``objectives``, ``loss``, ``deepspeed_config``, ``batch_plan`` and ``e5_data`` import without
Ray; ``train_loop`` imports it only inside its functions.
"""

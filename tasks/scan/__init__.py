"""Stage 1: the per-layer initial loss of a model, and the L3Prune choice of depths from it.

- ``layer_scan``: for each depth l, the contrastive loss of the model pruned to l, every depth
  from one forward pass per batch (the loss is stage 2's: ``tasks.training.loss``);
- ``layer_loss_task``: the Ray unit of work, a Ray generator task that loads the model once and
  yields each batch's per-layer losses. It imports Ray at module level;
- ``selection``: the small and the large depth picked from the per-layer losses.

Only ``layer_loss_task`` imports Ray; the others run without it.
"""

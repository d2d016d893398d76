"""layercut's units of work (Ray tasks) and the model-level code they run.

Everything here is plain PyTorch / transformers and runs without a Ray cluster;
only ``tasks.layer_loss_task`` touches Ray.
"""

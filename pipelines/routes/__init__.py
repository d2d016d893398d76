"""The sweep's routes: what one use case of a cut model supplies end to end (its stage
configs, stage 2's objective, its trials, what a trial does after training, its report section).

pipelines/routes/base.py is the contract (``Route``), pipelines/routes/registry.py the registry
(``ROUTES``), pipelines/routes/artifacts.py what each route's artifact is for a stage that
refuses it (a leaf: the stages import it), and each route a package: ``contrastive/`` (L3Prune
embeddings) and ``classification/`` ("Why Lift so Heavy?"). docs/architecture.md "Adding a
route" says where each piece goes. This file imports nothing: a route's modules import ``pipelines.routes.base``, which
runs it first.
"""

"""The contrastive embedding route (L3Prune, "Large Language Models Are Overparameterized Text
Encoders"): stage 1's per-layer loss picks two depths, each depth of the grid and the picks is
fine-tuned with hard-negative InfoNCE and evaluated on MTEB beside itself untrained.

Modules: ``plan`` (stage configs, checks, stage 1, trials), ``training`` (stage 2's objective),
``untrained`` (the depth untrained), ``trial`` (after training), ``rows`` and ``report``.
``route`` builds its ``Route`` from them; this file imports nothing, since
importing any of its modules runs it first.
"""

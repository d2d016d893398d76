"""The prompt-based classification route ("Why Lift so Heavy? Slimming Large Language Models by
Cutting Off the Layers"): per dataset, each depth keeps its LM head, is prompt-tuned on the
label words and scored by accuracy and macro-F1, against the unpruned model zero-shot.

Modules: ``plan`` (stage configs, trials, the zero-shot reference), ``training`` (stage 2's
objective), ``trial`` (after training), ``report``.
``route`` builds its ``Route`` from them; this file imports nothing, since
importing any of its modules runs it first.
"""

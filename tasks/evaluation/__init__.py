"""Stage 3: a layercut model scored on mteb tasks, with mteb's own tasks and evaluators.

- ``mteb_tasks``: mteb tasks by name or preset (``mteb_presets.yaml``, package data), local
  mirrors, subsets and splits, subsampling, the classification probes;
- ``mteb_model``: a layercut model as an mteb 2.x encoder; its progress bar reports through Ray
  when it runs in a Ray worker (Ray imported inside that function);
- ``corpus_encoding``: a large retrieval corpus encoded over a Ray Data actor pool (Ray
  imported inside the function);
- ``evaluation_task``: the unit of work, ``Evaluator``, the pooled task ``evaluate_in_turn`` and
  the actor ``EvaluationWorker``; it imports Ray at module level;
- ``bootstrap``: 95% intervals of subsampled scores, and paired intervals of a change;
- ``overlap``: which evaluation texts also occur in the training data.

Only ``evaluation_task`` imports Ray at module level; ``mteb_model`` and ``corpus_encoding``
import it inside the functions that need it; ``mteb_tasks``, ``bootstrap`` and ``overlap`` never.
"""

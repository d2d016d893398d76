"""The second route: prompt-based classification with a (cut) causal LM ("Why Lift so Heavy?").

- ``verbalizer``: a template and verbalizers, and the class scores of a causal LM (also the
  classification objective's loss in ``tasks.training.objectives``);
- ``classification_eval``: stage 3's unit of work for this route, ``ClassifierWorker`` (run
  in-process, as a Ray task or as actors by ``pipelines/classify.py``) and the metrics;
- ``classification_presets``: the packaged datasets, ``classification_datasets.yaml`` (package
  data beside it), read once at import.

The labelled texts themselves are read by ``tasks.training.classification_data``. None of these
modules imports Ray: the Ray wrapping is the caller's.
"""

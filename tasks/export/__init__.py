"""The product of stage 2: a standard embedding-model (or text-classifier) directory.

- ``artifact``: writes (and reads back ``layercut.json`` of) the exported model directory, the
  same for every route; what one kind of artifact adds is its ``ArtifactWriter``:
- ``embedding``: the contrastive route's (sentence-transformers files, the embedding card);
- ``classifier``: the classification route's (the prompt-based classifier's card);
- ``card``: what every model card says alike (base model, data, front matter);
- ``st_modules``: the text-span sentence-transformers modules a ``mean``/``weighted_mean``
  artifact carries. ``embedding`` copies this file into the artifact as ``layercut_modules.py``
  and ``modules.json`` names ``layercut_modules.*``, so an artifact never refers to this
  module's import path; the file must stay self-contained (torch and sentence-transformers);
- ``card_scores``: stage 3's scores in the artifact's model card.

None of these modules imports Ray.
"""

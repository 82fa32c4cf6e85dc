"""D2Pruner and its baselines inside Hugging Face transformers models.

* :mod:`d2pruner.models.handle` -- ``attach(model, budget, ...)`` for a model of any registered
  family, and the pruning handle (forward pre-hooks; nothing in transformers is patched).
* :mod:`d2pruner.models.family` -- the :class:`~d2pruner.models.family.ModelFamily` record and its
  registry; one family file each: :mod:`d2pruner.models.llava` (LLaVA-1.5),
  :mod:`d2pruner.models.internvl` (InternVL-2.5, tiles + thumbnail).
* :mod:`d2pruner.models.attention` -- attention rows from q/k with a pluggable rotary scheme.
* :mod:`d2pruner.models.cutting` -- cut hidden states, positions and masks.
* :mod:`d2pruner.models.probes` -- capturing what a method declares it needs.
* :mod:`d2pruner.models.prior` -- measuring, saving and loading the positional prior
  (``python -m d2pruner.models.prior``).
* :mod:`d2pruner.models.tiny` / :mod:`~d2pruner.models.tiny_processor` -- tiny random models of every
  family and their processors, for tests and demos.
* :mod:`d2pruner.models.loading` -- real checkpoints from the local cache, official prompts.
* :mod:`d2pruner.models.clip_text` -- CDPruner's CLIP text tower (local cache only) and relevance.
"""

from d2pruner.models.handle import ItemStats, PruningHandle, attach

__all__ = ["ItemStats", "PruningHandle", "attach"]

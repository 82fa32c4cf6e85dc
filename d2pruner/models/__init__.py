"""D2Pruner inside Hugging Face transformers models: one module per model family.

* :mod:`d2pruner.models.llava` -- ``attach(model, budget, ...)`` for LLaVA-1.5.
* :mod:`d2pruner.models.internvl` -- the same for InternVL-2.5 (tiles + thumbnail).
* :mod:`d2pruner.models.hooks` -- the shared pre-hook machinery and the attention-row computation.
* :mod:`d2pruner.models.prior` -- measuring, saving and loading the positional prior.
* :mod:`d2pruner.models.tiny` -- tiny random models of both families for tests and demos.
* :mod:`d2pruner.models.loading` -- real checkpoints from the local cache, official prompts.
* :mod:`d2pruner.models.clip_text` -- CDPruner's CLIP text tower (local cache only) and relevance.
"""

from d2pruner.models.hooks import D2PrunerMethod, ItemStats, PruningHandle

__all__ = ["D2PrunerMethod", "ItemStats", "PruningHandle"]

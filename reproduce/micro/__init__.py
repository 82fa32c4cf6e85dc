"""The micro reproduction: small LLaVA- and InternVL-architecture models trained here on synthetic
scenes, so that runs without a GPU and without the real weights print meaningful numbers.

- :mod:`reproduce.micro.scenes` and :mod:`reproduce.micro.questions`: scenes of coloured shapes on
  photographs, and questions whose answers are true by construction;
- :mod:`reproduce.micro.data`: split seeds and per-item random streams; the benchmark records of
  :mod:`reproduce.benchmarks` put items into the real data sets' schemas (their ``micro`` builders);
- :mod:`reproduce.micro.models`: the micro models' configurations, tokenizer and processors;
- :mod:`reproduce.micro.teach`: what the models learn from (each task's prompts, answers, streams);
- :mod:`reproduce.micro.train`: ``python -m reproduce.micro train --family llava`` (resumable), with the
  labels of its training-only auxiliary losses in :mod:`reproduce.micro.aids`;
- :mod:`reproduce.micro.evaluate` and :mod:`reproduce.micro.card`: held-out accuracy, the model card;
- :mod:`reproduce.micro.bias`: positional bias of a micro model and what debiasing changes.

The shipped checkpoints are ``reproduce/micro/checkpoints/<family>/``; see docs/micro.md.

The numbers these models give are micro-model numbers, never the paper's.
"""

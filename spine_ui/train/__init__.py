"""The training backend: ``python -m spine_ui train`` (:mod:`spine_ui.cli.train`) -> :func:`runner.train`.

- :mod:`~spine_ui.train.runner`: orchestration (stage order, ``done.json`` fingerprints, resume, logging);
- :mod:`~spine_ui.train.stages`: one module per stage (data, classify, select, detect, report, export);
- :mod:`~spine_ui.train.config`: ``TrainArgs`` and one frozen dataclass per concern (``TrainArgs.preprocess``
  is the ``PreprocessConfig`` the cache, the classifiers and the exported manifest use);
- :mod:`~spine_ui.train.vindr` (annotations, the enhanced training cache), :mod:`~spine_ui.train.folds`,
  :mod:`~spine_ui.train.classifier`, :mod:`~spine_ui.train.detector`, :mod:`~spine_ui.train.selection`,
  :mod:`~spine_ui.train.metrics`, :mod:`~spine_ui.train.report`.

Training imports the model contract (:mod:`spine_ui.core.contract`: model input, TTA views, vote) and the
cache is built with :func:`spine_ui.core.preprocess.enhance`, the functions the server uses; nothing here
imports the serving triage module.
"""

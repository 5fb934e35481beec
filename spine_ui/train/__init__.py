"""Training-side data tools: VinDr-SpineXR annotations, the preprocessed training cache
(:mod:`spine_ui.train.vindr`) and study-grouped cross-validation folds (:mod:`spine_ui.train.folds`).

The cache is built with :func:`spine_ui.core.preprocess.enhance`, the same function the server applies to
uploads, so training and serving see identical working images.
"""

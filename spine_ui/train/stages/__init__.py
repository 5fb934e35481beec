"""The training stages, one module each, run in order by :func:`spine_ui.train.runner.train`:

``data`` (synthetic set, enhanced cache, folds) -> ``classify`` -> ``detect`` -> ``select`` -> ``report``
-> ``export``. Each stage function returns a JSON-safe dict that the runner stores in the stage's
``done.json``; ``common`` holds the run-folder helpers they share.
"""

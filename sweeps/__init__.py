"""The Hydra side of olmo-sweeps: the config schema, the sweep presets (``sweeps/*.yaml``, config group
``sweep``), the driver callbacks (validation, MLflow parent run, summary) and the job function of run.py.

Only ``run.py``, this package and ``analysis/`` import Hydra; the library (``olmo``) never does.
"""

"""Every name analysis/ relies on in the MLflow store, in one place (align these with olmo/tracking).

The tracking side (``olmo/tracking``) writes the store; analysis only reads it. Where the two disagree, change the
constants here (or pass ``axes=`` / ``seed_key=`` / ``sweep_tag=`` to :func:`analysis.load_sweep`).
"""

from __future__ import annotations

# Metrics, logged at the optimizer step; train/flops is logged at the same step as every loss.
TRAIN_LOSS = "train/loss"
TRAIN_FLOPS = "train/flops"
TRAIN_TOKENS = "train/tokens"
EVAL_LOSS = "eval/loss"
EVAL_PERPLEXITY = "eval/perplexity"

# Tags on each job's run and on the sweep's own run ("parent run": it holds the summary and the report).
TAG_SWEEP_ID = "sweep_id"
TAG_SEED = "seed"
TAG_CONFIG_HASH = "config_hash"
TAG_GIT_COMMIT = "git_commit"
# A job's run names its sweep's run with this tag. Job runs are not nested under the sweep's run (MLflow's UI hides
# nested runs until their parent is expanded, charts included); stores written before that use MLflow's nested-run
# tag, which is still read.
TAG_SWEEP_RUN_ID = "sweep_run_id"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
SWEEP_RUN_TAGS: tuple[str, ...] = (TAG_SWEEP_RUN_ID, TAG_PARENT_RUN_ID)
TAG_RUN_NAME = "mlflow.runName"

# Axis tags: one tag per ablation axis, valued by the registry name (e.g. pos=rope). Tags named AXIS_TAG_PREFIX + axis
# are also taken as axes (the prefix is dropped from the axis name).
AXIS_TAGS: tuple[str, ...] = ("attention", "pos", "norm", "activation", "init", "block", "kernel")
AXIS_TAG_PREFIX = "axis."

# Where a run's seed may live when there is no seed tag (first match wins); params are the flattened config.
SEED_PARAMS: tuple[str, ...] = ("train.seed", "seed")

# Params that never tell variants apart (where/how often things are written, derived values). Any other param that
# varies across the runs and is not implied by the axis tags (a swept learning rate, width, ...) becomes an axis.
NON_CONFIG_PARAMS: tuple[str, ...] = (
    "data.cache_dir", "train.save_folder", "train.progress_bar", "train.checkpoint_interval", "train.keep_last",
    "train.peak_flops_per_second", "results_dir", "force",
)
NON_CONFIG_PREFIXES: tuple[str, ...] = ("tracking.", "hydra.", "derived.")

# The embedded store that run.py writes by default (<results_dir>/mlflow.db); MLFLOW_TRACKING_URI overrides it.
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RESULTS_DIR_ENV = "OLMO_SWEEPS_RESULTS"  # run.py's results_dir when set

# Where the report goes on the sweep's parent run.
ARTIFACT_PATH = "analysis"


def sweep_run_of(tags: dict[str, str]) -> str | None:
    """The id of the sweep's run that a job's run belongs to (None for a run outside a sweep)."""
    return next((tags[t] for t in SWEEP_RUN_TAGS if tags.get(t)), None)

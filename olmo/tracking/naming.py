"""What a run is called in MLflow: flattened params, the config hash, the axis tags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from olmo.config import ExperimentConfig, ModelConfig

# Fields that change where or how often things are written, never what is trained: left out of the config hash,
# so a rerun with another results folder or checkpoint interval is recognised as the same job.
NOT_HASHED = (
    "data.cache_dir",
    "train.save_folder",
    "train.progress_bar",
    "train.checkpoint_interval",
    "train.keep_last",
    "train.peak_flops_per_second",
)

# A job's run names the run of its sweep with this tag. Not MLflow's nested-run tag (mlflow.parentRunId): the UI
# hides nested runs, in the charts too, until their parent is expanded (even in a view whose filter leaves the parent
# out: MLflow 3.17 fetches it and collapses its children under it); flat runs are all visible at once.
TAG_SWEEP_RUN_ID = "sweep_run_id"

# Config value -> the option name used on the command line (conf/<axis>/<option>.yaml).
_NORM_NAMES = {"default": "layernorm"}
_INIT_NAMES = {"full_megatron": "megatron"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The flattened resolved config as MLflow params (strings)."""
    return {k: _param_str(v) for k, v in flatten(dataclasses.asdict(cfg)).items()}


def _param_str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)


def config_hash(cfg: ExperimentConfig) -> str:
    """16 hex digits identifying what is trained (the resolved config without run-specific paths)."""
    flat = {k: v for k, v in flatten(dataclasses.asdict(cfg)).items() if k not in NOT_HASHED}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def attention_kind(model: ModelConfig) -> str:
    kv = model.effective_n_kv_heads
    if kv == model.n_heads:
        return "mha"
    return "mqa" if kv == 1 else "gqa"


def axis_tags(model: ModelConfig) -> dict[str, str]:
    """The value of each ablation axis, named as on the command line (attention=gqa, norm=rms, ...)."""
    return {
        "attention": attention_kind(model),
        "pos": model.effective_positional,
        "norm": _NORM_NAMES.get(model.layer_norm_type, model.layer_norm_type),
        "activation": model.activation_type,
        "init": _INIT_NAMES.get(model.init_fn, model.init_fn),
        "block": model.block_type,
        "kernel": model.attention_backend,
    }


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit checked out at ``path`` (default: this package's checkout), with "-dirty" if files changed."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha

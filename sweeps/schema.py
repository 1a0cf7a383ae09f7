"""The schema of run.py's config, registered in Hydra's ConfigStore, and its conversion to olmo's dataclasses.

The primary config (conf/config.yaml) starts from ``schema`` (RunConfig: ExperimentConfig's sections plus the
run-level fields), so a typo or a value of the wrong type fails at composition, before any job starts.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from olmo.config import ExperimentConfig
from olmo.errors import OLMoConfigurationError, bad_value
from olmo.tracking import TrackingConfig

# conf/hydra/launcher/submitit_{local,slurm}.yaml keep the plugin's option names on purpose (so
# `hydra/launcher=submitit_slurm` picks our presets) and give every field; Hydra then validates them against the
# plugin's schema of the same name and warns that this matching is deprecated. Both behaviours are fine.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")

SWEEPS_DIR = Path(__file__).resolve().parent
SWEEP_GROUP = "sweep"


@dataclass
class RunConfig(ExperimentConfig):
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    results_dir: str = "results"  # checkpoints, Hydra outputs and logs, the default MLflow store
    force: bool = False  # rerun jobs that already FINISHED (from scratch)
    threads: int | None = None  # torch intra-op threads per job process (None: torch's default, one per core)


def _div(a: Any, b: Any) -> int:
    return max(1, int(a) // int(b))


def register_configs() -> None:
    """Register the schema, the sweep presets and the resolvers (idempotent)."""
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver("olmo_div", _div, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RunConfig)
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        node = OmegaConf.load(path)
        cs.store(group=SWEEP_GROUP, name=path.stem, node=node, package="_global_")


def sweep_presets() -> list[str]:
    return [p.stem for p in sorted(SWEEPS_DIR.glob("*.yaml"))]


# Registered on import too, so a process that unpickles the job function (submitit) can resolve configs.
register_configs()


@dataclass
class Composed:
    experiment: ExperimentConfig
    tracking: TrackingConfig
    results_dir: Path
    force: bool
    threads: int | None = None


def to_configs(cfg: DictConfig, cwd: str | Path | None = None) -> Composed:
    """The composed DictConfig (hydra node allowed) -> validated olmo dataclasses.

    Raises OLMoConfigurationError (one line) or OmegaConf's errors (missing values) on a bad config.
    ``results_dir`` is made absolute against ``cwd`` (Hydra's original working directory).
    """
    body = OmegaConf.to_container(cfg, resolve=False)
    body.pop("hydra", None)
    resolved = OmegaConf.to_container(OmegaConf.create(body), resolve=True, throw_on_missing=True)
    try:
        run: RunConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), resolved))
    except OLMoConfigurationError as e:
        # ModelConfig validates itself on construction and names its own fields (d_model); on the command line
        # they are model.d_model. The other sections name theirs in full already (data.paths, optim.lr).
        field = str(e).split("=", 1)[0]
        raise (OLMoConfigurationError(f"model.{e}") if "." not in field else e) from None
    parts = {f.name: getattr(run, f.name) for f in dataclasses.fields(ExperimentConfig)}
    experiment = ExperimentConfig(**parts)
    run.tracking.validate()
    results = Path(run.results_dir).expanduser()
    if not results.is_absolute():
        results = Path(cwd or Path.cwd()) / results
    if run.threads is not None and run.threads < 1:
        raise bad_value("threads", run.threads, "None (torch's default) or a positive integer")
    return Composed(experiment, run.tracking, results, run.force, run.threads)

"""Find and load a model and its tokenizer from a checkpoint reference (what ``generate.py checkpoint=...`` takes).

A reference is one of:

- an unsharded export folder (``<save_folder>/final``: ``model.safetensors`` + ``config.json``);
- a DCP checkpoint folder (``<save_folder>/step<N>``: ``model_and_optim/`` + ``meta.json``); the model config is
  read from its run folder (``<save_folder>/model_config.json``, written by ``run_experiment``, else
  ``<save_folder>/final/config.json``);
- a run folder (``train.save_folder``): its ``final`` export if there is one, else its newest checkpoint;
- an original OLMo checkpoint folder (``config.yaml`` + ``model.pt`` / ``model.safetensors``);
- an MLflow run id (32 hex digits, or ``runs:/<id>``): the run's ``train.save_folder`` param (olmo.tracking logs
  the flattened config as params) when that folder exists here, else the run's ``model`` artifact (the final
  export olmo.tracking logs).

The tokenizer is the ``tokenizer.json`` next to the weights, else in the run folder (``run_experiment`` writes
it there and into ``final``); ``tokenizer=`` overrides it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from olmo.config import ModelConfig
from olmo.errors import OLMoConfigurationError, bad_value

TOKENIZER_FILE = "tokenizer.json"
MODEL_CONFIG_FILE = "model_config.json"  # olmo.train.experiment.MODEL_CONFIG_FILE
SAVE_FOLDER_PARAM = "train.save_folder"
MODEL_ARTIFACT = "model"
_RUN_ID = re.compile(r"^(?:runs:/|mlflow:)?([0-9a-f]{32})/?$")


@dataclass
class LoadedCheckpoint:
    model: Any  # olmo.nn.OLMo, in eval mode
    tokenizer: Any | None  # tokenizers.Tokenizer
    kind: str  # export | dcp | olmo
    path: Path  # the folder the weights came from


def load_for_generation(
    reference: str | os.PathLike,
    device: str | torch.device = "cpu",
    tokenizer: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    results_dir: str | os.PathLike = "results",
) -> LoadedCheckpoint:
    reference = str(reference)
    path = Path(reference).expanduser()
    match = _RUN_ID.match(reference)
    if not path.exists() and match:
        path = _folder_of_run(match.group(1), tracking_uri, results_dir)
    if not path.exists():
        raise bad_value(
            "checkpoint", reference, "an existing checkpoint or run folder, or an MLflow run id (32 hex digits)"
        )
    kind, folder = _classify(path)
    if kind == "export":
        from olmo.checkpoint import load_unsharded

        model = load_unsharded(folder, device=device)
    elif kind == "olmo":
        from olmo.interop import load_olmo_checkpoint

        model = load_olmo_checkpoint(folder, device=device)
    else:
        model = _load_dcp(folder, device)
    tok = _load_tokenizer(tokenizer, [folder, folder.parent])
    return LoadedCheckpoint(model=model.eval(), tokenizer=tok, kind=kind, path=folder)


def _classify(path: Path) -> tuple[str, Path]:
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        config = json.loads((path / "config.json").read_text())
        if "model_type" in config:
            raise bad_value(
                "checkpoint", str(path), "one of ours or an original OLMo checkpoint (this is a Hugging Face model "
                "folder: load it with transformers)",
            )
        return "export", path
    if (path / "config.yaml").is_file() and any((path / f).is_file() for f in ("model.pt", "model.safetensors")):
        return "olmo", path
    if (path / "meta.json").is_file() and (path / "model_and_optim").is_dir():
        return "dcp", path
    if (path / "final").is_dir():
        return _classify(path / "final")
    from olmo.checkpoint import latest_checkpoint

    latest = latest_checkpoint(path)
    if latest is not None:
        return "dcp", latest
    raise bad_value(
        "checkpoint", str(path), "a folder with model.safetensors + config.json (an export), model_and_optim/ + "
        "meta.json (a step<N> checkpoint), config.yaml + model.pt (an original OLMo checkpoint), or a run folder "
        "holding final/ or step<N>/",
    )


def _load_dcp(folder: Path, device: str | torch.device) -> Any:
    from olmo.checkpoint import load_checkpoint
    from olmo.distributed.env import DistEnv
    from olmo.nn.model import OLMo

    run_folder = folder.parent
    for candidate in (run_folder / MODEL_CONFIG_FILE, run_folder / "final" / "config.json"):
        if candidate.is_file():
            config = ModelConfig(**json.loads(candidate.read_text()))
            break
    else:
        raise OLMoConfigurationError(
            f"checkpoint={str(folder)!r}: no model config for this step checkpoint; expected "
            f"{run_folder / MODEL_CONFIG_FILE} (written by run_experiment) or {run_folder / 'final' / 'config.json'}"
        )
    device = torch.device(device)
    model = OLMo(config.replace(init_device=None), device=device)
    with warnings.catch_warnings():  # DCP's "no process group: loading in a single process" is what we mean
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        load_checkpoint(folder, model, None, DistEnv(rank=0, world_size=1, local_rank=0, device=device))
    return model


def _load_tokenizer(override: str | os.PathLike | None, folders: list[Path]) -> Any | None:
    from olmo.data.tokenizer import load_tokenizer

    if override is not None:
        return load_tokenizer(override, field="tokenizer")
    for folder in folders:
        if (folder / TOKENIZER_FILE).is_file():
            return load_tokenizer(folder / TOKENIZER_FILE, field="tokenizer")
    return None


def _folder_of_run(run_id: str, tracking_uri: str | None, results_dir: str | os.PathLike) -> Path:
    """The run's save folder when it exists on this machine, else its logged final model (downloaded)."""
    from mlflow.exceptions import MlflowException

    from olmo.tracking.store import client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, results_dir)
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise bad_value("checkpoint", run_id, f"a run id of the MLflow store {uri} ({e.message})") from None
    save_folder = run.data.params.get(SAVE_FOLDER_PARAM)
    if save_folder and Path(save_folder).expanduser().exists():
        return Path(save_folder).expanduser()
    try:
        target = Path(tempfile.mkdtemp(prefix=f"olmo-run-{run_id[:8]}-"))
        return Path(c.download_artifacts(run_id, MODEL_ARTIFACT, str(target)))
    except (MlflowException, OSError) as e:
        raise bad_value(
            "checkpoint", run_id, f"a run whose {SAVE_FOLDER_PARAM} ({save_folder}) exists here or that logged a "
            f"'{MODEL_ARTIFACT}' artifact ({e})",
        ) from None

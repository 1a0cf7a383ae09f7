"""Sharded checkpoints through torch.distributed.checkpoint (DCP).

Layout of ``<save_folder>/step<N>/``:
    model_and_optim/   DCP shards of the model and optimizer (any world size can load them)
    rng/rank<r>.pt     each rank's RNG states (dropout), so a resumed run draws the same numbers
    meta.json          counters (step, tokens, FLOPs), world size, callback state (e.g. the tracking run id)

Every save goes to ``step<N>.tmp`` and is renamed when complete, so a process killed mid-write leaves only a
``.tmp`` folder that resuming ignores. The last ``keep_last`` complete checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from olmo.distributed.env import DistEnv, barrier, broadcast_object

_STEP_DIR = re.compile(r"^step(\d+)$")


@dataclass
class CheckpointMeta:
    step: int
    tokens: int
    flops: int
    world_size: int
    global_batch_size: int
    callbacks: dict[str, Any] = field(default_factory=dict)


def list_checkpoints(save_folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (``.tmp`` folders of interrupted saves are not listed)."""
    root = Path(save_folder)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_folder: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(save_folder)
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    save_folder: str | os.PathLike,
    meta: CheckpointMeta,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = Path(save_folder)
    final = root / f"step{meta.step:08d}"
    tmp = root / f"step{meta.step:08d}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "model_and_optim"),
                 no_dist=_no_dist())
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank{env.rank}.pt")
    barrier()
    if env.is_main:
        # meta.json last: its presence marks the content complete; the rename makes it visible at once.
        with open(tmp / "meta.json", "w") as f:
            json.dump(asdict(meta), f, indent=2)
        _commit(tmp, final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("step*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def _no_dist() -> bool:
    """One process without a process group: say so to DCP (else it warns that it assumes so, in every job log)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every save of a single process that it "assumes" one, even when told so (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _commit(tmp: Path, final: Path) -> None:
    """Make a fully written checkpoint visible in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None, env: DistEnv
) -> CheckpointMeta:
    """Load into an already built (and possibly FSDP-sharded) model and optimizer; any world size."""
    path = Path(path)
    meta_dict = broadcast_object(json.loads((path / "meta.json").read_text()) if env.is_main else None)
    meta = CheckpointMeta(**meta_dict)
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        model_sd = get_model_state_dict(model)
        with _single_process_quiet():
            dcp.load({"model": model_sd}, checkpoint_id=str(path / "model_and_optim"), no_dist=_no_dist())
        set_model_state_dict(model, model_sd)
        return meta
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path / "model_and_optim"), no_dist=_no_dist())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / "rng" / f"rank{env.rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return meta

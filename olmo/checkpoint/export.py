"""Unsharded export: safetensors weights + the model config as JSON, loadable without the trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from olmo.config import ModelConfig
from olmo.nn.model import OLMo

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def export_unsharded(model: nn.Module, config: ModelConfig, folder: str | os.PathLike, is_main: bool = True) -> Path:
    """Collective under FSDP (gathers the full weights); only ``is_main`` writes. Atomic (tmp + rename)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    folder = Path(folder)
    if is_main:
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config.asdict(), indent=2))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
    return folder


def load_unsharded(folder: str | os.PathLike, device: str | torch.device = "cpu") -> OLMo:
    folder = Path(folder)
    config = ModelConfig(**json.loads((folder / CONFIG).read_text()))
    model = OLMo(config.replace(init_device=None), device=device)
    model.load_state_dict(load_file(folder / WEIGHTS, device=str(device)))
    return model

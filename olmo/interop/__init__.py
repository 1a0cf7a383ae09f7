"""Checkpoint interop: the original OLMo layout (import and export) and Hugging Face transformers (export).

    from olmo.interop import load_olmo_checkpoint, save_olmo_checkpoint, to_hf, save_hf

    model = load_olmo_checkpoint("path/to/olmo/step1000-unsharded")   # config.yaml + model.pt
    save_olmo_checkpoint(model, "out/")                                # back to the original layout
    hf_model = to_hf(model)                                            # OlmoForCausalLM or Olmo2ForCausalLM
    save_hf(model, "out-hf/", tokenizer_file="tokenizer.json")         # save_pretrained
"""

from olmo.interop.hf import check_hf_compatible, hf_arch, hf_config, hf_incompatibilities, hf_state_dict, save_hf, to_hf
from olmo.interop.olmo_layout import (
    config_from_olmo,
    config_to_olmo,
    load_olmo_checkpoint,
    save_olmo_checkpoint,
    state_dict_from_olmo,
    state_dict_to_olmo,
)

__all__ = [
    "check_hf_compatible",
    "config_from_olmo",
    "config_to_olmo",
    "hf_arch",
    "hf_config",
    "hf_incompatibilities",
    "hf_state_dict",
    "load_olmo_checkpoint",
    "save_hf",
    "save_olmo_checkpoint",
    "state_dict_from_olmo",
    "state_dict_to_olmo",
    "to_hf",
]

#!/usr/bin/env python
"""Generate text from a trained model (Hydra app; config: conf_generate/generate.yaml).

    python generate.py checkpoint=results/checkpoints/olmo-sweeps/<hash> prompt="ROMEO:"
    python generate.py checkpoint=<run folder>/final prompt="To be" beam_size=4 num_return=2 length_penalty=1.0
    python generate.py checkpoint=<run folder>/step00000100 prompt="KING" sampler=top_p top_p=0.9 temperature=0.8
    python generate.py checkpoint=<MLflow run id> 'prompts=["ROMEO:","JULIET:"]' max_steps=32 ngram_block=3

``checkpoint`` is an unsharded export (``final``), a ``step<N>`` checkpoint, a run's ``train.save_folder``, an
original OLMo checkpoint folder, or an MLflow run id (see olmo/generate/loading.py). A prompt with commas or other
Hydra syntax needs inner quotes: ``prompt="'Friends, Romans'"``.
"""

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from olmo.errors import OLMoConfigurationError
from olmo.generate.cli import GenerateConfig, run_generate

ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


@hydra.main(config_path="conf_generate", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_generate(OmegaConf.to_object(cfg))
    except MissingMandatoryValue as e:
        sys.exit(f"error: {e.full_key} is required (e.g. checkpoint=<run folder or MLflow run id>)")
    except OLMoConfigurationError as e:  # a user error: one line, no stack trace
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

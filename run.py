#!/usr/bin/env python
"""Train one OLMo-style model, or a sweep of them, configured from conf/ (Hydra).

    python run.py                                  the default: tiny model, Shakespeare, `quick` budget
    python run.py -m attention=gqa,mqa pos=rope,alibi   four jobs, one MLflow parent run
    python run.py +sweep=attention                 a ready sweep preset (sweeps/attention.yaml)
    torchrun --nproc_per_node 2 run.py ...         one job as 2 FSDP ranks

See README.md; `python run.py --help` lists the config groups and their options.
"""

import hydra
from omegaconf import DictConfig

from sweeps.job import run_job
from sweeps.schema import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


if __name__ == "__main__":
    main()

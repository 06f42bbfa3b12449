"""python -m harness [exp=NAME] [key=value ...]: run an experiment (docs/harness.md).

The presets are harness/conf/*/*.yaml (models: paged/presets/model/*.yaml), packaged with the code, so
this works from any directory and from an installed wheel.

Examples:
    python -m harness                                  # the default: exp=sharegpt_opt13b, simulated
    python -m harness exp=smoke
    python -m harness exp=alpaca_opt13b systems=[vllm,orca_oracle] request_rates=[8,16] duration_s=600
    python -m harness -m exp=sharegpt_opt13b,alpaca_opt13b hydra/launcher=joblib
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.config import Config, register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from omegaconf.errors import OmegaConfBaseException

    from harness.experiment import ExperimentError, import_plugins, run_experiment
    from harness.workload import WorkloadError

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        # Plug-ins first: a policy they register is checked by name when the config is built.
        import_plugins(Config(plugins=list(cfg.plugins)))
        plain: Config = OmegaConf.to_object(cfg)  # runs the presets' own checks (ModelSpec, ...)
        run_experiment(plain, config_yaml)
    except (ExperimentError, WorkloadError, ValueError, FileNotFoundError, OmegaConfBaseException) as e:
        # Bad settings get one sentence, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

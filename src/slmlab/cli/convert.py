"""slmlab-convert: a checkpoint from one layout to another (`slmlab.convert.convert`); see conf/convert.yaml."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.convert import convert
from slmlab.runs import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="convert")
def main(cfg: DictConfig) -> None:
    check_config(cfg, "convert")
    print(convert(cfg.input, cfg.output, cfg.to))


if __name__ == "__main__":
    main()

"""slmlab-train: fit one arm on one corpus with the composed config (slmlab.runs.train)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.runs import CONF_DIR, train


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_config(cfg, "train")
    return train(cfg).get("val/loss")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()

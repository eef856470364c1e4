"""slmlab-compare: a sweep's run folders -> the study's report (slmlab.eval.compare).

slmlab-compare                                   (the latest compare_tiny sweep -> experiments/compare_tiny/)
slmlab-compare study=compare_small               (the latest compare_small sweep -> experiments/compare_small/)
slmlab-compare sweep_dir=outputs/compare_tiny/multiruns/<time>
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.eval.compare import write_report
from slmlab.runs import CONF_DIR


def latest_sweep(log_dir: str, study: str) -> Path:
    sweeps = sorted((Path(log_dir) / study / "multiruns").glob("*"))
    if not sweeps:
        raise FileNotFoundError(
            f"no sweep under {Path(log_dir) / study / 'multiruns'}; run "
            f"`slmlab-train -m experiment={study}` first, or pass sweep_dir="
        )
    return sweeps[-1]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    check_config(cfg, "compare")
    sweep_dir = cfg.sweep_dir or latest_sweep(cfg.paths.log_dir, cfg.study.name)
    write_report(
        sweep_dir,
        cfg.out_dir,
        cfg.study.question,
        list(cfg.study.commands),
        cfg.project_readme,
        root=cfg.paths.root_dir,
    )
    print(Path(cfg.out_dir) / "README.md")


if __name__ == "__main__":
    main()

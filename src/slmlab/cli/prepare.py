"""slmlab-prepare: synthesise or convert the corpus, fit the tokenizers, fill the token cache.

slmlab-prepare data=synthetic data.preset=default
slmlab-prepare data=librispeech data.source=/data/LibriSpeech
slmlab-prepare model=csm evaluate=true      (also fit the codec, the judge ASR and the style classifier)
"""

from __future__ import annotations

import json
import logging
import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.runs import CONF_DIR, build

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    check_config(cfg, "prepare")
    started = time.perf_counter()
    datamodule, _ = build(cfg)
    datamodule.prepare_data()
    if cfg.get("evaluate"):  # the judges of slmlab-eval, fitted once per corpus
        instantiate(cfg.eval.judge, corpus=datamodule.corpus)
        instantiate(cfg.eval.style_classifier, corpus=datamodule.corpus)
    summary = {
        "corpus": str(datamodule.corpus.root),
        "seconds": round(time.perf_counter() - started, 1),
        "data": datamodule.summary(),
    }
    log.info("prepared: %s", json.dumps(summary))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

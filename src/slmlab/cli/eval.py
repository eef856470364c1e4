"""slmlab-eval: every metric a trained run's arm supports (slmlab.runs.evaluate_run), written into the
run's `metrics.json` (key "eval") and its TensorBoard folder; with `eval.split=val`, scored on the val
split into this job's own folder (`metrics.json`, key "eval_val"), to choose decoding settings:
  slmlab-eval -m ckpt_path=... eval.split=val generation.temperature=0.9,0.6,0.4

The run is loaded from its folder alone (`runs.load_task`); its corpus (the run config's
`data.corpus.root`) is read only for the test items, the probes and the judges of `eval`."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.runs import CONF_DIR, evaluate_run, load_corpus, load_task


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    check_config(cfg, "evaluate")
    task, run_cfg = load_task(cfg.ckpt_path, with_config=True, generation=cfg.generation)
    run_dir = Path(cfg.ckpt_path).parent.parent
    corpus = load_corpus(run_cfg)
    split = cfg.eval.split
    if not Path(corpus.manifest(split)).is_file():  # evaluation never synthesises a corpus
        raise FileNotFoundError(
            f"{corpus.manifest(split)} not found: slmlab-eval scores {run_dir} on the {split} items of "
            f"its corpus {corpus.root} (manifests, {split} audio, probes); put them there, or prepare "
            "that corpus with slmlab-prepare and the run's data settings"
        )
    # eval.split=val (choosing decoding settings) writes into this job's own folder, so that a multirun
    # over generation.* keeps one result per setting and the run's test evaluation stays as it was
    out_dir = run_dir if split == "test" else HydraConfig.get().runtime.output_dir
    evaluation = evaluate_run(task, corpus, cfg.eval, run_cfg, out_dir)
    print(json.dumps({"metrics": evaluation.metrics, "baselines": evaluation.baselines}, indent=2))
    return evaluation.metrics


if __name__ == "__main__":
    main()

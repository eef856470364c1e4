"""A run, from its config to its metrics: the library behind every entry point (`slmlab.cli`), the
benchmarks and the tests.

    compose("train", ["model=csm"])        -> the config the CLI would compose (outside a Hydra app)
    build(cfg)                             -> (datamodule, task): corpus -> tokenizers -> both
    train(cfg)                             -> fit, test the best checkpoint, evaluate (`evaluate=true`)
    load_task(ckpt_path)                   -> a finished run's task, rebuilt from its run folder
    evaluate_run(task, corpus, ...)        -> every metric the arm declares, into metrics.json and TensorBoard

A run folder is `<run>/.hydra/config.yaml` (the resolved config), `<run>/checkpoints/*.ckpt`,
`<run>/metrics.json` and `<run>/tensorboard/`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from slmlab.artifacts import (
    CHECKPOINT_ADVICE,
    UnreadableFileError,
    check_checkpoint,
    load_tensors,
)
from slmlab.config_checks import check_config
from slmlab.data.manifest import RecordPolicy
from slmlab.eval.evaluate import Evaluation, Evaluator
from slmlab.eval.tensorboard import log_evaluation

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(REPO_ROOT / "conf")
# `paths.root_dir` in conf/paths/default.yaml: $SLMLAB_ROOT when set, else this checkout
OmegaConf.register_new_resolver(
    "slmlab_root", lambda: os.environ.get("SLMLAB_ROOT", str(REPO_ROOT)), replace=True
)


def sweep_job_name(*, _root_: DictConfig) -> str:
    """A sweep job's folder name from the overrides that vary across the sweep (`speechlm_seed0`,
    `lr0.003`): a config group's choice by itself, any other key as `<last part of key><value>`.
    Replaces Hydra's `${hydra.job.num}`, which names the jobs 0/, 1/, ...; the job number is kept
    where nothing varies, or where a value had to be made safe ([A-Za-z0-9._+-] only) or short."""
    hydra = _root_.hydra
    multirun = Path(hydra.sweep.dir) / "multirun.yaml"  # written by the sweeper before any job
    if not multirun.is_file():
        return str(hydra.job.num)
    sweep = OmegaConf.load(multirun).hydra
    parser = OverridesParser.create()
    params = [f"{key}={value}" for key, value in (sweep.sweeper.get("params") or {}).items()]
    swept = parser.parse_overrides([*params, *sweep.overrides.task])
    varying = {o.key_or_group for o in swept if o.is_sweep_override()}
    parts = []
    for override in parser.parse_overrides(list(hydra.overrides.task)):
        if override.key_or_group in varying:
            value = str(override.value())
            is_group = override.key_or_group in hydra.runtime.choices
            parts.append(value if is_group else override.key_or_group.split(".")[-1] + value)
    name = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", name)[:96]
    if not name:
        return str(hydra.job.num)
    return safe if safe == name else f"{safe}_{hydra.job.num}"


OmegaConf.register_new_resolver("slmlab_sweep_job", sweep_job_name, replace=True)

# the run's settings shown in TensorBoard's hparams table (compact, so that a sweep's runs line up)
HPARAMS = {
    "arm": "model.name",
    "seed": "seed",
    "max_steps": "trainer.max_steps",
    "batch_size": "datamodule.batch_size",
    "lr": "model.task.optimizer.lr",
    "corpus": "data.preset",
}


def compose(config_name: str = "train", overrides: list[str] = ()) -> DictConfig:
    """The config `slmlab-<config_name> overrides...` would run with, composed outside a Hydra app
    and checked as the CLI checks it (`ConfigError`: every bad key, its value, what is allowed)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides))
    check_config(cfg, config_name)
    return cfg


def check_speech_tokenizer(cfg: DictConfig, choice: str | None, model: str = "this model") -> None:
    """Fail before any fitting when `tokenizer/speech=choice` is not one the model accepts."""
    accepted = list(cfg.model.get("speech_tokenizers") or [])
    if accepted and choice not in accepted:
        raise ValueError(
            f"tokenizer/speech={choice} does not fit model={model}; it accepts tokenizer/speech="
            f"{' | '.join(accepted)}"
        )
    if not accepted and cfg.tokenizer.get("speech") is not None:
        log.warning("tokenizer/speech=%s is set but this model uses no speech tokenizer", choice)


def load_corpus(cfg: DictConfig):
    """The run's corpus, carrying the record policy of `cfg.datamodule`, so that every reader (fitters,
    judges, the evaluator, training) keeps and skips the same records."""
    corpus = instantiate(cfg.data.corpus)
    corpus.record_policy = RecordPolicy.model_validate(
        OmegaConf.to_container(cfg.datamodule, resolve=True)
    )
    return corpus


def build(cfg: DictConfig):
    """corpus -> tokenizers -> datamodule and task, as the config says."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if "tokenizer/speech" in choices:  # composed here (train, prepare), not a saved run's config
        check_speech_tokenizer(cfg, choices["tokenizer/speech"], choices.get("model"))
    corpus = load_corpus(cfg)
    corpus.prepare()
    tokenizers = {"text": instantiate(cfg.tokenizer.text, corpus=corpus)}
    extra = {}
    if cfg.model.get("speech_tokenizers"):
        tokenizers["speech"] = extra["speech_tokenizer"] = instantiate(
            cfg.tokenizer.speech, corpus=corpus
        )
    fields = {
        name: instantiate(field, tokenizers=tokenizers) for name, field in cfg.model.fields.items()
    }
    datamodule = instantiate(cfg.datamodule, corpus=corpus, fields=fields)
    task = instantiate(cfg.model.task, tokenizer=tokenizers["text"], **extra)
    return datamodule, task


def train(cfg: DictConfig) -> dict:
    """Fit the run `cfg` describes; then test its best checkpoint (`test`), save the transformers
    layout (arms that have one) and evaluate it (`evaluate`). -> the last logged metrics."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get(
        "ckpt_path"
    ):  # a truncated, corrupt or unsafe checkpoint fails here, naming the file
        check_checkpoint(cfg.ckpt_path)
    datamodule, task = build(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:  # the whole config (CSV, TensorBoard text)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if cfg.get("test"):  # report the best checkpoint (by val/loss) on both held-out splits
        callback = trainer.checkpoint_callback
        best = (callback.best_model_path if callback else "") or None
        trainer.validate(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
        trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
    if hasattr(task, "save_pretrained") and trainer.is_global_zero:  # the transformers way
        task.save_pretrained(Path(cfg.paths.output_dir) / "pretrained")
    if cfg.get("evaluate") and trainer.is_global_zero:  # slmlab-eval on the tested checkpoint
        tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        evaluate_run(task, datamodule.corpus, cfg.eval, cfg, cfg.paths.output_dir, tensorboard)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def load_task(ckpt_path: str | Path, with_config: bool = False):
    """The run's task with the checkpoint's weights, rebuilt from `<run>/.hydra/config.yaml` (and
    that config, `with_config`)."""
    ckpt_path = Path(ckpt_path)
    run_config = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not ckpt_path.is_file() or not run_config.is_file():
        raise FileNotFoundError(
            f"{ckpt_path}: expected a checkpoint inside a run folder with {run_config}"
        )
    checkpoint = load_tensors(ckpt_path, CHECKPOINT_ADVICE)  # before `build` fits anything
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableFileError(ckpt_path, "has no state_dict: not a Lightning checkpoint")
    cfg = OmegaConf.load(run_config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ckpt_path.parent.parent)
    _, task = build(cfg)
    task.load_state_dict(checkpoint["state_dict"])
    return (task.eval(), cfg) if with_config else task.eval()


def evaluate_run(
    task,
    corpus,
    eval_cfg: DictConfig,
    run_cfg: DictConfig,
    output_dir: str | Path,
    logger: TensorBoardLogger | None = None,
) -> Evaluation:
    """Evaluate `task` on `corpus` with the judges of `eval_cfg`; merge the result into the run's
    metrics.json (key "eval") and log it to its TensorBoard folder."""
    settings = {
        k: v
        for k, v in OmegaConf.to_container(eval_cfg, resolve=True).items()
        if k not in ("judge", "style_classifier")
    }
    evaluator = Evaluator(
        corpus,
        instantiate(eval_cfg.judge, corpus=corpus),
        instantiate(eval_cfg.style_classifier, corpus=corpus),
        **settings,
    )
    L.seed_everything(run_cfg.seed)  # sampled TTS and continuations repeat on a rerun
    if torch.cuda.is_available():  # Lightning's teardown leaves the task on the CPU
        task.to("cuda")
    evaluation = evaluator(task.eval())
    path = Path(output_dir) / "metrics.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["eval"] = {
        "metrics": evaluation.metrics,
        "baselines": evaluation.baselines,
        "empty_outputs": evaluation.empty,
        "items": evaluation.items,  # each item's (num, den) per metric: the report's intervals
        "settings": settings,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    logger = logger or TensorBoardLogger(
        Path(output_dir) / "tensorboard", name=None, version="", default_hp_metric=False
    )
    hparams = {name: OmegaConf.select(run_cfg, key) for name, key in HPARAMS.items()}
    log_evaluation(
        logger,
        evaluation,
        hparams | {"parameters": record.get("parameters")},
        record.get("global_step", 0),
    )
    log.info("eval metrics -> %s", path)
    return evaluation

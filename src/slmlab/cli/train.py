"""slmlab-train: fit one arm on one corpus with the composed config; write metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from slmlab.cli import CONF_DIR

log = logging.getLogger(__name__)


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


def build(cfg: DictConfig):
    """corpus -> tokenizers -> datamodule and task, as the config says."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if (
        "tokenizer/speech" in choices
    ):  # composed here (train, prepare), not a finished run's saved config
        check_speech_tokenizer(cfg, choices["tokenizer/speech"], choices.get("model"))
    corpus = instantiate(cfg.data.corpus)
    corpus.prepare()
    tokenizers = {"text": instantiate(cfg.tokenizer.text, corpus=corpus)}
    extra = {}
    if cfg.model.get("speech_tokenizers"):
        tokenizers["speech"] = extra["speech_tokenizer"] = instantiate(
            cfg.tokenizer.speech, corpus=corpus
        )
    datamodule = instantiate(
        cfg.datamodule, corpus=corpus, tokenizers=tokenizers, fields=list(cfg.model.fields)
    )
    task = instantiate(cfg.model.task, tokenizer=tokenizers["text"], **extra)
    return datamodule, task


def train(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(
            OmegaConf.to_container(cfg, resolve=True)
        )  # the whole config (CSV, TensorBoard text)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("test"):  # report the best checkpoint (by val/loss) on both held-out splits
        best = (
            trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ) or None
        trainer.validate(task, datamodule=datamodule, ckpt_path=best)
        trainer.test(task, datamodule=datamodule, ckpt_path=best)
    if (
        hasattr(task, "save_pretrained") and trainer.is_global_zero
    ):  # the transformers way, next to the checkpoints
        task.save_pretrained(Path(cfg.paths.output_dir) / "pretrained")
    if (
        cfg.get("evaluate") and trainer.is_global_zero
    ):  # slmlab-eval on the checkpoint that was tested
        from slmlab.cli.eval import evaluate_run

        tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        evaluate_run(task, datamodule.corpus, cfg.eval, cfg, cfg.paths.output_dir, tensorboard)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/loss")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()

"""slmlab-eval: every metric a trained run's arm supports (slmlab.eval.evaluate), written into the run's
`metrics.json` (key "eval") and its TensorBoard folder (scalars under eval/, TTS audio and spectrograms, ASR
samples, and the hparams table with the eval metrics)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from slmlab.cli import CONF_DIR
from slmlab.cli.generate import load_task
from slmlab.eval.evaluate import Evaluation, Evaluator

log = logging.getLogger(__name__)

# the run's settings shown in TensorBoard's hparams table (compact, so that a sweep's runs line up)
HPARAMS = {
    "arm": "model.name",
    "seed": "seed",
    "max_steps": "trainer.max_steps",
    "batch_size": "datamodule.batch_size",
    "lr": "model.task.optimizer.lr",
    "corpus": "data.preset",
}


def evaluate_run(
    task,
    corpus,
    eval_cfg: DictConfig,
    run_cfg: DictConfig,
    output_dir: str | Path,
    logger: TensorBoardLogger | None = None,
) -> Evaluation:
    """Evaluate `task` on `corpus` with the judges of `eval_cfg`; merge the result into metrics.json."""
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


def log_evaluation(
    logger: TensorBoardLogger, evaluation: Evaluation, hparams: dict, step: int
) -> None:
    """eval/* scalars, the hparams table with them, TTS audio (generated, then reference) with spectrograms,
    and ASR hypotheses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchaudio

    scalars = {f"eval/{k}": v for k, v in evaluation.metrics.items() if v is not None}
    logger.log_hyperparams(
        {k: ("n/a" if v is None else v) for k, v in hparams.items()}, metrics=scalars
    )
    logger.log_metrics(scalars, step)  # also at the run's last step, beside the audio
    writer = logger.experiment
    spectrogram = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    asr = [x for x in evaluation.samples if x["kind"] == "asr"]
    for i, sample in enumerate(asr):
        writer.add_text(
            f"eval/asr_{i}",
            f"**reference** {sample['text']}  \n**heard** {sample['hypothesis']}",
            step,
        )
    for i, sample in enumerate(x for x in evaluation.samples if x["kind"] == "tts"):
        figure, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for axis, name in zip(axes, ("generated", "reference")):
            wave = sample[name].float()
            writer.add_audio(
                f"eval/tts_{i}_{name}", wave[None].clamp(-1, 1), step, sample_rate=16000
            )
            axis.imshow(
                spectrogram(wave).clamp_min(1e-6).log().numpy(), origin="lower", aspect="auto"
            )
            axis.set_title(f"{name}: {sample['text']}", fontsize=9)
        axes[-1].set_xlabel("frame (10 ms)")
        writer.add_figure(f"eval/tts_{i}_spectrograms", figure, step)
    writer.flush()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    task, run_cfg = load_task(cfg.ckpt_path, with_config=True)
    run_dir = Path(cfg.ckpt_path).parent.parent
    evaluation = evaluate_run(task, instantiate(run_cfg.data.corpus), cfg.eval, run_cfg, run_dir)
    print(json.dumps({"metrics": evaluation.metrics, "baselines": evaluation.baselines}, indent=2))
    return evaluation.metrics


if __name__ == "__main__":
    main()

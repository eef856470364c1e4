"""An evaluation in TensorBoard: eval/* scalars (and eval/<metric>_empty, the empty or failed outputs),
the hparams table with them, TTS audio (generated, then reference) with spectrograms, and ASR
hypotheses beside their references."""

from __future__ import annotations

import torchaudio
from lightning.pytorch.loggers import TensorBoardLogger

from slmlab.constants import SAMPLE_RATE
from slmlab.eval.evaluate import Evaluation


def log_evaluation(
    logger: TensorBoardLogger, evaluation: Evaluation, hparams: dict, step: int
) -> None:
    """Write `evaluation` at `step`; `hparams` (the run's settings) form its row of the hparams table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = {f"eval/{k}": v for k, v in evaluation.metrics.items() if v is not None}
    logger.log_hyperparams(
        {k: ("n/a" if v is None else v) for k, v in hparams.items()}, metrics=scalars
    )
    empty = {f"eval/{k}_empty": float(n) for k, n in evaluation.empty.items()}
    logger.log_metrics(scalars | empty, step)  # also at the run's last step, beside the audio
    writer = logger.experiment
    spectrogram = torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80
    )
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
                f"eval/tts_{i}_{name}", wave[None].clamp(-1, 1), step, sample_rate=SAMPLE_RATE
            )
            axis.imshow(
                spectrogram(wave).clamp_min(1e-6).log().numpy(), origin="lower", aspect="auto"
            )
            axis.set_title(f"{name}: {sample['text']}", fontsize=9)
        axes[-1].set_xlabel("frame (10 ms)")
        writer.add_figure(f"eval/tts_{i}_spectrograms", figure, step)
    writer.flush()

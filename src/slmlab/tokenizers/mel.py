"""Log-mel analysis and mel -> waveform vocoding, shared by the unit vocoder (Spirit LM) and the built-in
codec (CSM): torchaudio's Griffin-Lim by default, or a HiFi-GAN from a local folder (transformers'
`SpeechT5HifiGan`, which must have been trained on the same mel settings)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio


class MelVocoder:
    """mel: MelSpectrogram settings (n_fft, win_length, hop_length, n_mels[, f_min, f_max]) at `sample_rate`."""

    def __init__(
        self,
        sample_rate: int,
        mel: dict,
        griffin_lim_iters: int = 32,
        vocoder_path: str | None = None,
    ) -> None:
        self.sample_rate, self.mel, self.hop = sample_rate, dict(mel), mel["hop_length"]
        self.mel_spectrogram = torchaudio.transforms.MelSpectrogram(sample_rate, power=1.0, **mel)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            mel["n_fft"] // 2 + 1,
            mel["n_mels"],
            sample_rate,
            mel.get("f_min", 0.0),
            mel.get("f_max"),
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            mel["n_fft"], griffin_lim_iters, mel["win_length"], mel["hop_length"], power=1.0
        )
        self.hifigan = None
        if vocoder_path is not None:
            from transformers import SpeechT5HifiGan

            if not Path(vocoder_path).is_dir():
                raise FileNotFoundError(
                    f"vocoder folder not found: {vocoder_path} (slmlab never downloads)"
                )
            self.hifigan = SpeechT5HifiGan.from_pretrained(
                vocoder_path, local_files_only=True
            ).eval()

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] -> natural-log mel [n_mels, S // hop]."""
        return self.mel_spectrogram(wav).clamp_min(1e-5).log()[:, : len(wav) // self.hop]

    @torch.no_grad()
    def mel_to_wave(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel [n_mels, M] -> waveform [M * hop]. Silent frames are appended before inversion (at least one,
        as Griffin-Lim's inverse STFT returns (M - 1) hops, and up to one FFT window for very short clips)."""
        frames = log_mel.shape[1]
        log_mel = F.pad(
            log_mel, (0, max(1, self.mel["n_fft"] // self.hop + 1 - frames)), value=math.log(1e-5)
        )
        if self.hifigan is not None:  # SpeechT5's HiFi-GAN reads log10 mels, [M, n_mels]
            wave = self.hifigan(log_mel.T / math.log(10))
        else:
            wave = self.griffin_lim(self.inverse_mel(log_mel.exp()))
        return wave[: frames * self.hop]

"""SpeechLM's audio front-ends: waveforms -> what its encoder reads, through transformers feature
extractors.

    waveform [S] at `sample_rate` Hz (16 kHz)
      -> wav2vec2 / HuBERT: normalised waveform `input_values` [S] (zero mean, unit variance)
      -> Whisper: log-mel `input_features` [n_mels, F], 10 ms hop (100 frames per second)
      -> FastConformer (Parakeet): normalised log-mel `input_features`, 10 ms hop; its extractor gives
         [F, n_mels], turned here to Whisper's [n_mels, F]

A batch is each utterance's features zero-padded to the longest, with its length in samples or mel
frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoFeatureExtractor,
    ParakeetFeatureExtractor,
    PretrainedConfig,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)

from slmlab.constants import SAMPLE_RATE


def build_feature_extractor(
    audio_config: PretrainedConfig,
    pretrained_path: str | None = None,
    sample_rate: int = SAMPLE_RATE,
):
    """The encoder's own feature extractor from its local folder when it has one, else the matching
    default: Whisper's or the FastConformer's log-mel (n_mels from the config) or waveforms for
    wav2vec2/HuBERT, normalised unless the config says `do_normalize=False` (a released mHuBERT's)."""
    if pretrained_path and (Path(pretrained_path) / "preprocessor_config.json").is_file():
        return AutoFeatureExtractor.from_pretrained(pretrained_path, local_files_only=True)
    if audio_config.model_type == "whisper":
        return WhisperFeatureExtractor(
            feature_size=audio_config.num_mel_bins, sampling_rate=sample_rate
        )
    if audio_config.model_type == "parakeet_encoder":
        return ParakeetFeatureExtractor(
            feature_size=audio_config.num_mel_bins, sampling_rate=sample_rate
        )
    return Wav2Vec2FeatureExtractor(
        sampling_rate=sample_rate,
        do_normalize=getattr(audio_config, "do_normalize", True),
        return_attention_mask=True,
    )


def extract_features(
    feature_extractor, waveforms: list[torch.Tensor], sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms [S_i] at `sample_rate` Hz -> ([B, S] waveforms or [B, n_mels, F] log-mel, lengths
    [B]). Each utterance goes through the feature extractor alone, then is zero-padded, so that its
    features never depend on its batch. This loop replaces the extractor's own batch padding, with
    which Whisper's extractor pads the waveforms (to 30 s by default) before its log-mel, so that an
    utterance's last frames would change with the longest one in its batch."""
    items = [_features(feature_extractor, w, sample_rate) for w in waveforms]
    lengths = torch.tensor([it.shape[-1] for it in items])
    padded = torch.zeros(len(items), *items[0].shape[:-1], int(lengths.max()))
    for row, item in zip(padded, items):
        row[..., : item.shape[-1]] = item
    return padded, lengths


def _features(feature_extractor, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """One utterance's features, time last: [S] or [n_mels, F]. The FastConformer's extractor gives
    [F + 1, n_mels] with its valid frames in `attention_mask` (a last, zeroed frame is not one)."""
    out = feature_extractor(
        waveform.numpy(), sampling_rate=sample_rate, padding=False, return_tensors="np"
    )
    item = torch.as_tensor(out[feature_extractor.model_input_names[0]][0])
    if isinstance(feature_extractor, ParakeetFeatureExtractor):
        item = item[: int(out["attention_mask"][0].sum())].T
    return item

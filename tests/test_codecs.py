"""Codecs for CSM: the built-in RVQ codec fitted on the tiny corpus, and Mimi loaded from a local file."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from slmlab.data.manifest import audio_path, load_audio, read_manifest
from slmlab.tokenizers.codecs import BuiltinCodec, MimiCodec, load_or_fit_builtin_codec


@pytest.fixture(scope="module")
def clip(tiny_corpus) -> torch.Tensor:
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    return load_audio(audio_path(records[0]), 24000)


def mel_error(reference: torch.Tensor, log_mel: torch.Tensor) -> float:
    """Mean |log-mel difference| over the frames both cover; reference: the log-mel of a waveform."""
    frames = min(reference.shape[1], log_mel.shape[1])
    return float((reference[:, :frames] - log_mel[:, :frames]).abs().mean())


def test_builtin_codec_round_trip_keeps_a_held_out_clip(tiny_corpus, clip, tmp_path):
    codec = load_or_fit_builtin_codec(tiny_corpus, num_codebooks=4, cardinality=32)
    codes = codec.encode(clip)
    frames = math.ceil(len(clip) / 1920)  # 12.5 Hz at 24 kHz
    assert codec.frame_rate == 12.5 and codec.sample_rate == 24000
    assert codes.shape == (codec.num_codebooks, frames) == (4, frames) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < codec.cardinality == 32
    padded = torch.nn.functional.pad(clip, (0, frames * 1920 - len(clip)))
    reference = codec.vocoder.log_mel(padded)
    # on a validation clip the fit never saw, each codebook refines the mel of the ones before
    by_k = [mel_error(reference, codec.decode_mel(codes[:k])) for k in range(1, 5)]
    assert all(later < earlier for earlier, later in zip(by_k, by_k[1:])), by_k
    # the codes carry this clip: another utterance's codes decode further from it than its own
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    other = codec.encode(load_audio(audio_path(records[1]), 24000))
    assert by_k[-1] < 0.5 * mel_error(reference, codec.decode_mel(other)), by_k
    # Griffin-Lim's waveform has the decoded mel: re-encoded, it keeps most of codebook 0 (0.96 measured)
    audio = codec.decode(codes)
    assert audio.shape == (frames * 1920,)
    again = codec.encode(audio)
    assert float((again[0] == codes[0]).float().mean()) > 0.8
    decoded = codec.vocoder.log_mel(audio)
    own, others = codec.decode_mel(codes), codec.decode_mel(other)
    assert mel_error(own, decoded) < 0.25 * mel_error(others, decoded)
    codec.save(tmp_path / "codec")
    assert torch.equal(BuiltinCodec.load(tmp_path / "codec").encode(clip), codes)


def test_mimi_round_trip_with_random_weights_from_a_local_file(tmp_path, clip, make_cfg):
    from moshi.models.loaders import get_mimi

    save_file(get_mimi(None).state_dict(), str(tmp_path / "mimi.safetensors"))
    cfg = make_cfg(
        "model=csm",
        "tokenizer/speech=codec_mimi",
        f"tokenizer.speech.weights_path={tmp_path / 'mimi.safetensors'}",
        "tokenizer.speech.num_codebooks=8",
    )
    codec = instantiate(cfg.tokenizer.speech, corpus=None)  # as `slmlab-train` builds it
    second = clip[:24000]
    codes = codec.encode(second)
    assert codec.frame_rate == 12.5 and codec.sample_rate == 24000 and codec.cardinality == 2048
    assert codes.shape == (8, 13) and codes.max() < 2048
    assert codec.decode(codes).shape == (13 * 1920,)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        MimiCodec("kyutai/moshiko-pytorch-bf16")
    with pytest.raises(ValueError, match="1 to 32 codebooks"):
        MimiCodec(str(tmp_path / "mimi.safetensors"), num_codebooks=33)

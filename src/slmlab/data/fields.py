"""What the data module serves an arm: a field turns an `Utterance` into a tensor.

An arm names its fields in its model config (`model.fields`: name -> a field's `_target_` and
settings); each is built from the run's tokenizers (`{"text": ..., "speech": ...}`). A `cached`
field is computed once per split and stored in the token cache under its `fingerprint()`; the others
are read on every access.
"""

from __future__ import annotations

import torch

from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import Utterance, audio_path, load_audio


class TextIdsField:
    """text_ids: LongTensor [L] = bos + BPE(text) + eos, from the text tokenizer."""

    cached = True

    def __init__(self, tokenizers: dict) -> None:
        self.tokenizer = tokenizers["text"]
        self.pad_value = self.tokenizer.pad_id

    def fingerprint(self) -> str:
        return "text_ids-" + self.tokenizer.fingerprint()

    def __call__(self, record: Utterance) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(record.text), dtype=torch.long)


class WaveformField:
    """audio: FloatTensor [S] at `sample_rate`, read from disk on every access (not cached)."""

    cached = False
    pad_value = 0.0

    def __init__(self, tokenizers: dict, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate

    def __call__(self, record: Utterance) -> torch.Tensor:
        return load_audio(record.audio_filepath, self.sample_rate)


class SpeechStreamField:
    """units / pitch / style: LongTensor [T] of frame-level speech tokens (25, 12.5, 1 Hz; not
    deduplicated) from the units speech tokenizer (`tokenizers/units.py`), read from 16 kHz audio."""

    cached = True
    pad_value = 0

    def __init__(self, tokenizers: dict, stream: str) -> None:
        tokenizer = tokenizers.get("speech")
        if tokenizer is None or not hasattr(tokenizer, "encode_streams"):
            raise ValueError(
                f"data field {stream!r} needs a units speech tokenizer (tokenizer/speech=units_mfcc "
                f"or units_hubert); got {type(tokenizer).__name__}"
            )
        self.tokenizer, self.stream = tokenizer, stream

    def fingerprint(self) -> str:
        return f"{self.stream}-{self.tokenizer.fingerprint()}"

    def __call__(self, record: Utterance) -> torch.Tensor:
        wav = load_audio(record.audio_filepath, SAMPLE_RATE)
        return self.tokenizer.encode_streams(wav, (self.stream,))[self.stream]


class CodecField:
    """codes: LongTensor [T, K] of a codec's K codebooks at its frame rate (`tokenizers/codecs.py`),
    read at the codec's sample rate (the corpus's 24 kHz file when it has one)."""

    cached = True
    pad_value = 0

    def __init__(self, tokenizers: dict) -> None:
        codec = tokenizers.get("speech")
        if codec is None or not hasattr(codec, "num_codebooks"):
            raise ValueError(
                "data field 'codes' needs a codec (tokenizer/speech=codec_builtin or codec_mimi); "
                f"got {type(codec).__name__}"
            )
        self.codec = codec

    def fingerprint(self) -> str:
        return f"codes-{self.codec.fingerprint()}"

    def __call__(self, record: Utterance) -> torch.Tensor:
        wave = load_audio(audio_path(record), self.codec.sample_rate)
        return self.codec.encode(wave).T.contiguous()

"""Pretrained parts made per corpus: the text LM (`text_lm.py`) and the speech encoder (`speech_encoder.py`),
each fitted once per corpus and settings, cached under `<corpus>/artifacts/` (`artifacts.fit_once`) and saved
as a local `save_pretrained` folder, so that the arms load them through the code paths a real Llama or
HuBERT checkpoint takes."""

from __future__ import annotations

from pathlib import Path

from slmlab.pretrain.speech_encoder import load_or_fit_speech_encoder
from slmlab.pretrain.text_lm import load_or_fit_text_lm

PARTS = ("text_lm", "speech_encoder")


def load_or_fit_part(part: str, corpus, tokenizer, **settings) -> Path:
    """The folder of `corpus`'s pretrained `part`, fitted by the first caller with `settings` (the `pretrain`
    group's, the arm's recipe giving `model`): "text_lm" on the corpus's BPE `tokenizer`, "speech_encoder"."""
    if part == "text_lm":
        return load_or_fit_text_lm(corpus, tokenizer, **settings)
    if part == "speech_encoder":
        return load_or_fit_speech_encoder(corpus, **settings)
    raise ValueError(f"no pretrained part {part!r}; slmlab.pretrain fits {' | '.join(PARTS)}")

"""The arm protocol: what the evaluator (`slmlab.eval.evaluate`) may ask of an arm.

One `typing.Protocol` per capability, each with one signature. A task declares what it can do in
`capabilities` (names from `CAPABILITIES`) and whether it `speaks` (turns its speech tokens into a
waveform: Spirit LM without a unit vocoder does not). The evaluator asks only for what is declared;
a metric an arm cannot produce stays None (n/a in the report), never zero. Waveforms are 1-D float
tensors [S] at the task's `sample_rate`; likelihoods are (log-likelihood in nats, tokens scored).

    capability        method                                            metrics
    transcribe        transcribe(waveforms) -> texts                    asr_wer, asr_cer
                      transcribe(waveforms, examples=...) (optional:    asr_wer_fewshot, asr_cer_fewshot
                      per waveform, its (waveform, text) train pairs)
    synthesise        synthesise(text, speaker, max_seconds) -> wav     tts_wer, tts_cer, generation_rtf
                      synthesise(..., examples=...) (optional)          tts_wer_fewshot, tts_cer_fewshot
    score_texts       score_texts(texts) -> [(nats, n)]                 text_ppl, *_text probes
    score_speech      score_speech(waveforms, speakers) -> [(nats, n)]  speech_nats_per_second, *_speech
    continue_speech   continue_speech(prompt, seconds, prompt_text,     style_accuracy
                                      speaker, next_text) -> wav
    resynthesise      resynthesise(waveform) -> wav                     resynthesis_wer (beside
                                                                        resynthesis_ceiling_wer),
                                                                        *_style_accuracy
    decode_true_codebook0                                               true_codebook0_wer
                      decode_true_codebook0(waveform, text, speaker)
                      -> wav (CSM: its codebook 0 kept, the decoder's
                      other codebooks; TTS with a backbone that never errs)

An arm may take further keyword arguments after these, with defaults.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch


class Transcribes(Protocol):
    def transcribe(self, waveforms: list[torch.Tensor]) -> list[str]:
        """Speech -> text, one string per waveform."""


class Synthesises(Protocol):
    def synthesise(self, text: str, speaker: str | None, max_seconds: float) -> torch.Tensor:
        """Text -> speech [S], at most `max_seconds` long; `speaker` may be ignored."""


class ScoresText(Protocol):
    def score_texts(self, texts: list[str]) -> list[tuple[float, int]]:
        """Each text's log-likelihood (nats, end of sequence excluded) and the tokens it counts."""


class ScoresSpeech(Protocol):
    def score_speech(
        self, waveforms: list[torch.Tensor], speakers: list[str | None]
    ) -> list[tuple[float, int]]:
        """Each waveform's log-likelihood (nats) under the arm's speech tokens, and their count."""


class ContinuesSpeech(Protocol):
    def continue_speech(
        self,
        prompt: torch.Tensor,
        seconds: float,
        prompt_text: str,
        speaker: str | None,
        next_text: str,
    ) -> torch.Tensor:
        """About `seconds` of speech that follows `prompt` (whose transcript is `prompt_text`), by the
        same speaker; an arm that conditions on text may say `next_text`, others ignore the texts."""


class Resynthesises(Protocol):
    def resynthesise(self, waveform: torch.Tensor) -> torch.Tensor:
        """A waveform through the arm's own speech tokens and decoder: its speech output's ceiling."""


class DecodesTrueCodebook0(Protocol):
    def decode_true_codebook0(
        self, waveform: torch.Tensor, text: str, speaker: str | None
    ) -> torch.Tensor:
        """A waveform's own first speech codebook, the arm's decoder generating the others, conditioned on
        the true text and frames: its speech output with a first stage that never errs."""


CAPABILITIES: dict[str, type] = {
    "transcribe": Transcribes,
    "synthesise": Synthesises,
    "score_texts": ScoresText,
    "score_speech": ScoresSpeech,
    "continue_speech": ContinuesSpeech,
    "resynthesise": Resynthesises,
    "decode_true_codebook0": DecodesTrueCodebook0,
}
SPEECH_OUTPUT = frozenset(
    {"synthesise", "continue_speech", "resynthesise", "decode_true_codebook0"}
)


def can(task, capability: str) -> bool:
    """Whether `task` declares `capability`; speech output needs the task to speak as well."""
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    declared = capability in task.capabilities
    return declared and (task.speaks or capability not in SPEECH_OUTPUT)


def check_arm(task) -> None:
    """Raise TypeError unless each declared capability is a method whose leading parameters are its
    protocol's, by name and in order, with any further ones optional."""
    arm = type(task).__name__
    unknown = set(task.capabilities) - set(CAPABILITIES)
    if unknown:
        raise TypeError(
            f"{arm} declares unknown capabilities {sorted(unknown)}; known: {list(CAPABILITIES)}"
        )
    for name in task.capabilities:
        method = getattr(task, name, None)
        if not callable(method):
            raise TypeError(f"{arm} declares {name!r} but has no such method")
        expected = _parameters(getattr(CAPABILITIES[name], name))
        found = list(inspect.signature(method).parameters.values())
        names = [p.name for p in found[: len(expected)]]
        extra = [
            p
            for p in found[len(expected) :]
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if names != expected or extra:
            raise TypeError(
                f"{arm}.{name}{inspect.signature(method)} does not follow the protocol: expected "
                f"({', '.join(expected)}, [optional keywords])"
            )


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]

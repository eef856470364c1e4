"""Spirit LM's one token stream: text BPE, `[TEXT]`/`[SPEECH]` switches and speech tokens, and the
training sequences built from it (speech-only, text-only, or interleaved at word boundaries).

    vocab = InterleavedVocabulary(text_tokenizer, speech_tokenizer, kinds=("Hu",))   # Base; Expressive: Hu, Pi, St
    sequences = InterleavedSequences(vocab, ratios={"speech": 1, "text": 1, "interleaved": 1},
                                     text_span_words=(2, 4), speech_span_words=(1, 3))
    ids, kind = sequences.build(text, words, streams, rng)  # words: [{"word", "start", "end"}], frame-level streams

An interleaved sequence of "the dog runs fast" might read
`<s>[TEXT] the dog[SPEECH][Hu12][Hu7]...[Hu3][TEXT] fast</s>`: spans alternate, their lengths in words are
drawn from the configured ranges, and speech spans are cut from the stream at word boundaries (halfway
through the pause between two words).
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from slmlab.constants import TOKEN_RATES

TEXT, SPEECH = "[TEXT]", "[SPEECH]"
MODALITIES = ("TEXT", "SPEECH", "ARBITRARY")


class InterleavedVocabulary:
    """Text ids first (the text tokenizer's), then `[TEXT]`, `[SPEECH]`, then one id per value of each speech
    token kind in `kinds`, contiguous per kind. Extends `text_tokenizer` in place (transformers' added tokens)."""

    def __init__(self, text_tokenizer, speech_tokenizer, kinds=("Hu",)) -> None:
        self.text, self.speech = text_tokenizer, speech_tokenizer
        self.text_size = len(text_tokenizer)
        self.kinds, sizes = tuple(kinds), speech_tokenizer.sizes
        names = [TEXT, SPEECH] + [
            f"[{kind}{value}]" for kind in self.kinds for value in range(sizes[kind])
        ]
        ids = text_tokenizer.add_special_tokens(names)
        if ids != list(range(self.text_size, self.text_size + len(names))):
            raise ValueError(
                "the text tokenizer already holds [TEXT], [SPEECH] or speech tokens; start from the plain "
                "text tokenizer (not a Spirit LM run's pretrained/ folder)"
            )
        self.text_id, self.speech_id = ids[0], ids[1]
        self.first_speech_id = ids[2]
        self.offsets, start = {}, ids[2]
        for kind in self.kinds:
            self.offsets[kind] = start
            start += sizes[kind]
        self.size = start

    def __len__(self) -> int:
        return self.size

    def speech_ids(self, tokens: list[tuple[str, int]]) -> list[int]:
        return [self.offsets[kind] + value for kind, value in tokens]

    def speech_tokens(self, ids) -> list[tuple[str, int]]:
        """Ids of speech tokens -> [(kind, value)]; other ids are an error."""
        tokens = []
        for i in ids:
            i = int(i)
            kind = next((k for k, offset in reversed(self.offsets.items()) if i >= offset), None)
            if kind is None or i >= self.size:
                raise ValueError(
                    f"id {i} is not a speech token id ({self.first_speech_id}..{self.size - 1})"
                )
            tokens.append((kind, i - self.offsets[kind]))
        return tokens

    def is_speech(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.first_speech_id) & (ids < self.size)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text BPE tokens and the text tokenizer's specials (eos), not the switches."""
        return (ids >= 0) & (ids < self.text_size)

    def kind_mask(self, ids: torch.Tensor, kind: str) -> torch.Tensor:
        start = self.offsets[kind]
        return (ids >= start) & (ids < start + self.speech.sizes[kind])

    def words_ids(self, words: list[str]) -> list[int]:
        """Text ids of a span of words, encoded as one string (as the tokenizer reads a sentence's start)."""
        return self.text.encode(" ".join(words), bos=False, eos=False)

    def suppressed_ids(self, modality: str) -> list[int]:
        """Ids masked out of the logits for an output `modality`: TEXT forbids speech tokens and `[SPEECH]`;
        SPEECH forbids text tokens (but eos) and `[TEXT]`; every modality forbids bos and pad."""
        if modality not in MODALITIES:
            raise ValueError(
                f"unknown output modality {modality!r}; valid: {', '.join(MODALITIES)}"
            )
        never = [self.text.bos_id, self.text.pad_id]
        if modality == "TEXT":
            return never + [self.speech_id, *range(self.first_speech_id, self.size)]
        if modality == "SPEECH":
            return [i for i in range(self.text_size) if i != self.text.eos_id] + [self.text_id]
        return never

    def split(self, ids) -> list[tuple[str, list[int]]]:
        """Generated ids -> [("TEXT", text ids) | ("SPEECH", speech ids)] pieces in order; switches and
        specials (bos, eos, pad) end a piece and are dropped."""
        pieces: list[tuple[str, list[int]]] = []
        for i in (int(i) for i in ids):
            modality = (
                "SPEECH"
                if self.first_speech_id <= i < self.size
                else "TEXT"
                if i < self.text_size
                else None
            )
            if i in (
                self.text.bos_id,
                self.text.eos_id,
                self.text.pad_id,
                self.text_id,
                self.speech_id,
            ):
                modality = None
            if modality is None:
                pieces.append(("", []))
            elif pieces and pieces[-1][0] == modality:
                pieces[-1][1].append(i)
            else:
                pieces.append((modality, [i]))
        return [(m, piece) for m, piece in pieces if piece]


def word_boundaries(words: list[dict], end: float) -> list[float]:
    """Cut points between words (s), n + 1 of them: 0, the middle of each inter-word pause, `end`."""
    middles = [(before["end"] + after["start"]) / 2 for before, after in zip(words, words[1:])]
    return [0.0, *middles, end]


def draw_spans(
    n_words: int,
    rng: random.Random,
    text_span: tuple[int, int],
    speech_span: tuple[int, int],
    first: str | None = None,
) -> list[tuple[str, int, int]]:
    """Alternating spans [(modality, first word, end word)] covering n_words words, starting with `first`
    (drawn when None), lengths uniform in the modality's range; at least one switch when n_words >= 2."""
    modality = first or rng.choice(("TEXT", "SPEECH"))
    spans, start = [], 0
    while start < n_words:
        low, high = text_span if modality == "TEXT" else speech_span
        length = min(rng.randint(low, high), n_words - start)
        if start == 0 and n_words >= 2:
            length = min(length, n_words - 1)
        spans.append((modality, start, start + length))
        start += length
        modality = "SPEECH" if modality == "TEXT" else "TEXT"
    return spans


class InterleavedSequences:
    """Builds one training sequence per utterance: bos, then switch-marked spans, then eos.

    ratios: relative weights of {"speech", "text", "interleaved"} (the reference draws a third each);
    text_span_words / speech_span_words: (min, max) span lengths in words (reference 10-30 and 5-15,
    scaled down for the embedded corpus's short sentences). An utterance without word timings cannot be
    interleaved; it is built speech-only or text-only instead, and counted in `counts`.
    """

    def __init__(
        self,
        vocab: InterleavedVocabulary,
        ratios: dict[str, float] | None = None,
        text_span_words: tuple[int, int] = (10, 30),
        speech_span_words: tuple[int, int] = (5, 15),
    ) -> None:
        self.vocab = vocab
        ratios = dict(ratios or {"speech": 1.0, "text": 1.0, "interleaved": 1.0})
        unknown = set(ratios) - {"speech", "text", "interleaved"}
        if unknown or sum(ratios.values()) <= 0:
            raise ValueError(
                f"interleave ratios must weigh speech, text, interleaved; got {ratios}"
            )
        self.kinds, self.weights = list(ratios), list(ratios.values())
        self.text_span, self.speech_span = tuple(text_span_words), tuple(speech_span_words)
        self.counts: Counter = Counter()

    def draw_kind(self, rng: random.Random) -> str:
        return rng.choices(self.kinds, self.weights)[0]

    def speech(
        self, streams: dict[str, torch.Tensor], start: float = 0.0, end: float | None = None
    ) -> list[int]:
        return self.vocab.speech_ids(self.vocab.speech.merge(streams, start, end))

    def build(
        self,
        text: str,
        words: list[dict] | None,
        streams: dict[str, torch.Tensor],
        rng: random.Random,
        kind: str | None = None,
        count: bool = True,
    ) -> tuple[list[int], str]:
        """-> (ids, kind built). streams: frame-level tensors of the kinds in use (units/pitch/style);
        count: add the sequence to `counts` (training; evaluation builds its sequences uncounted)."""
        kind = kind or self.draw_kind(rng)
        if kind == "interleaved" and not words:
            kind = rng.choice(("speech", "text"))
            self.counts["interleaved_without_word_timings"] += count
        self.counts[kind] += count
        vocab = self.vocab
        if kind == "speech":
            body = [vocab.speech_id, *self.speech(streams)]
        elif kind == "text":
            body = [vocab.text_id, *vocab.text.encode(text, bos=False, eos=False)]
        else:
            end = len(streams["units"]) / TOKEN_RATES["Hu"]
            cuts = word_boundaries(words, end)
            body = []
            for modality, first, last in draw_spans(
                len(words), rng, self.text_span, self.speech_span
            ):
                if modality == "TEXT":
                    body += [
                        vocab.text_id,
                        *vocab.words_ids([w["word"] for w in words[first:last]]),
                    ]
                else:
                    body += [vocab.speech_id, *self.speech(streams, cuts[first], cuts[last])]
        return [vocab.text.bos_id, *body, vocab.text.eos_id], kind

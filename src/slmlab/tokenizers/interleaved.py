"""Spirit LM's one token stream: text BPE, `[TEXT]`/`[SPEECH]` switches and speech tokens, and the
training sequences built from it (speech-only, text-only, interleaved at word boundaries, or paired).

    vocab = InterleavedVocabulary(text_tokenizer, speech_tokenizer, kinds=("Hu",))   # Base; Expressive: Hu, Pi, St
    sequences = InterleavedSequences(vocab, ratios={"speech": 1, "text": 1, "interleaved": 1},
                                     text_span_words=(2, 4), speech_span_words=(1, 3))
    ids, kind = sequences.build(text, words, streams, rng)  # words: [{"word", "start", "end"}], frame-level streams

An interleaved sequence of "the dog runs fast" might read
`<s>[TEXT] the dog[SPEECH][Hu12][Hu7]...[Hu3][TEXT] fast</s>`: spans alternate, their lengths in words are
drawn from the configured ranges, and speech spans are cut from the stream at word boundaries (halfway
through the pause between two words). A paired sequence holds one utterance whole in both modalities,
`<s>[SPEECH][Hu12]...[TEXT] the dog runs fast</s>` or text first (`ratios.paired`, 0 by default as in the paper).

Two token layouts: `slmlab` (ours: the text tokenizer extended with `[TEXT]`, `[SPEECH]` and exactly our
speech tokenizer's values) and `release` (the ids of facebookresearch/spiritlm's checkpoints, read from
their tokenizer, `[Text]`/`[Speech]` spelled as there).
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from slmlab.constants import TOKEN_RATES
from slmlab.tokenizers.units import merge_streams

TEXT, SPEECH = "[TEXT]", "[SPEECH]"
KINDS = ("speech", "text", "interleaved", "paired")
"""The training sequence kinds `InterleavedSequences` builds."""
MODALITIES = ("TEXT", "SPEECH", "ARBITRARY")
LAYOUTS = ("slmlab", "release")
RELEASE_SWITCHES = ("[Text]", "[Speech]")
RELEASE_SIZES = {"Hu": 501, "Pi": 64, "St": 100}
"""Values per kind in the released vocabularies: [Hu0]..[Hu500] (500 mHuBERT units + its linear
quantizer's CTC blank), [Pi0]..[Pi63], [St0]..[St99]."""
RELEASE_ROWS_MULTIPLE = 128
"""The released models' embedding rows: the tokenizer's count rounded up to this (Base: 32,000 text +
2 + 501 = 32,503 -> 32,512; Expressive: + 64 + 100 = 32,667 -> 32,768)."""
RELEASE_ORDER = {"St": 0, "Pi": 1, "Hu": 2}
"""At equal times the release writes style, then pitch, then units (`[St71][Pi39][Hu99]`; its units sit
at 24.99 Hz so that they sort after the pitch token of the same instant)."""


def release_merge(
    streams: dict[str, torch.Tensor], start: float = 0.0, end: float | None = None, dedup=True
) -> list[tuple[str, int]]:
    """Frame-level streams -> [(kind, value)] in [start, end) s the way the release's `units_to_string`
    writes them: units and pitch with repeats merged (when `dedup`), style never merged (one token per
    second), in time order with RELEASE_ORDER at equal times. (`SpeechTokenizer.merge` is our order:
    units before pitch, style merged.)"""
    return merge_streams(streams, start, end, RELEASE_ORDER, ("Hu", "Pi") if dedup else ())


class InterleavedVocabulary:
    """The ids of the switches and of each speech token kind in `kinds`, contiguous per kind.

    layout="slmlab": text ids first (the text tokenizer's), then `[TEXT]`, `[SPEECH]`, then one id per value
    of each kind, exactly the speech tokenizer's values; extends `text_tokenizer` in place (transformers'
    added tokens).
    layout="release": a release tokenizer (spirit-lm-base-7b / spirit-lm-expressive-7b) already holds
    `[Text]`, `[Speech]`, `[Hu0]`.. after its text ids; our values map onto them (unit 12 -> `[Hu12]`).
    Rows the speech tokenizer cannot produce (release tokens beyond its values, the padding rows up to
    RELEASE_ROWS_MULTIPLE) are never generated (`suppressed_ids`).
    """

    def __init__(self, text_tokenizer, speech_tokenizer, kinds=("Hu",), layout="slmlab") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown token layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.text, self.speech, self.layout = text_tokenizer, speech_tokenizer, layout
        self.kinds, sizes = tuple(kinds), speech_tokenizer.sizes
        names = [f"[{kind}{value}]" for kind in self.kinds for value in range(sizes[kind])]
        if layout == "slmlab":
            self.text_size = len(text_tokenizer)
            ids = text_tokenizer.add_special_tokens([TEXT, SPEECH, *names])
            if ids != list(range(self.text_size, self.text_size + len(ids))):
                raise ValueError(
                    "the text tokenizer already holds [TEXT], [SPEECH] or speech tokens; start from the "
                    "plain text tokenizer (not a Spirit LM run's pretrained/ folder)"
                )
            self.size = self.text_size + len(ids)
        else:
            ids = self._release_ids(text_tokenizer, [*RELEASE_SWITCHES, *names])
            self.text_size = min(ids)
            self.size = -(-len(text_tokenizer) // RELEASE_ROWS_MULTIPLE) * RELEASE_ROWS_MULTIPLE
        self.text_id, self.speech_id = ids[0], ids[1]
        self.offsets, position = {}, 2
        for kind in self.kinds:
            self.offsets[kind] = ids[position]
            position += sizes[kind]
        expected = self.speech_ids([(kind, v) for kind in self.kinds for v in range(sizes[kind])])
        if ids[2:] != expected:
            name, i, want = next(x for x in zip(names, ids[2:], expected) if x[1] != x[2])
            raise ValueError(
                f"layout={layout}: {name} has id {i}; each kind's values must follow on, {want}"
            )
        self.first_speech_id = min(self.offsets.values())
        usable = torch.zeros(self.size, dtype=torch.bool)
        usable[: self.text_size] = True
        usable[ids] = True
        self.unused_ids = (~usable).nonzero().flatten().tolist()

    @staticmethod
    def _release_ids(text_tokenizer, names: list[str]) -> list[int]:
        """The ids of `names` in a release tokenizer; a name it lacks is an error naming it."""
        hf = text_tokenizer.hf
        ids = hf.convert_tokens_to_ids(names)
        missing = [name for name, i in zip(names, ids) if i is None or i == hf.unk_token_id]
        if missing:
            raise ValueError(
                f"layout=release: the text tokenizer has no {missing[0]} (a release tokenizer holds "
                f"{', '.join(RELEASE_SWITCHES)} and {RELEASE_SIZES} speech values; Base has no Pi/St); "
                "set tokenizer/text=hf_pretrained with the release folder's path"
            )
        return ids

    def __len__(self) -> int:
        """Rows of the LM's embeddings (release: padded)."""
        return self.size

    def merge(
        self, streams: dict[str, torch.Tensor], start: float = 0.0, end: float | None = None
    ) -> list[tuple[str, int]]:
        """Frame-level streams -> speech tokens in [start, end) s, in this layout's order."""
        if self.layout == "release":
            return release_merge(streams, start, end, self.speech.dedup)
        return self.speech.merge(streams, start, end)

    def speech_ids(self, tokens: list[tuple[str, int]]) -> list[int]:
        return [self.offsets[kind] + value for kind, value in tokens]

    def _range(self, kind: str) -> range:
        """The ids of the values of `kind` our speech tokenizer makes."""
        return range(self.offsets[kind], self.offsets[kind] + self.speech.sizes[kind])

    def kind_of(self, i: int) -> str | None:
        """The speech token kind of id `i`, None for any other id."""
        return next((kind for kind in self.kinds if i in self._range(kind)), None)

    def speech_tokens(self, ids) -> list[tuple[str, int]]:
        """Ids of speech tokens -> [(kind, value)]; other ids are an error."""
        tokens = []
        for i in (int(i) for i in ids):
            kind = self.kind_of(i)
            if kind is None:
                ranges = ", ".join(
                    f"{k} {self._range(k)[0]}..{self._range(k)[-1]}" for k in self.kinds
                )
                raise ValueError(f"id {i} is not a speech token id ({ranges})")
            tokens.append((kind, i - self.offsets[kind]))
        return tokens

    def is_speech(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.kind_mask(ids, kind) for kind in self.kinds]).any(0)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text BPE tokens and the text tokenizer's specials (eos), not the switches."""
        return (ids >= 0) & (ids < self.text_size)

    def kind_mask(self, ids: torch.Tensor, kind: str) -> torch.Tensor:
        ids_of_kind = self._range(kind)
        return (ids >= ids_of_kind.start) & (ids < ids_of_kind.stop)

    def words_ids(self, words: list[str]) -> list[int]:
        """Text ids of a span of words, encoded as one string (as the tokenizer reads a sentence's start)."""
        return self.text.encode(" ".join(words), bos=False, eos=False)

    def suppressed_ids(self, modality: str) -> list[int]:
        """Ids masked out of the logits for an output `modality`: TEXT forbids speech tokens and `[SPEECH]`;
        SPEECH forbids text tokens (but eos) and `[TEXT]`; every modality forbids bos, pad and the unused
        rows (release layout: tokens our speech tokenizer never makes, padding)."""
        if modality not in MODALITIES:
            raise ValueError(
                f"unknown output modality {modality!r}; valid: {', '.join(MODALITIES)}"
            )
        never = [self.text.bos_id, self.text.pad_id, *self.unused_ids]
        if modality == "TEXT":
            speech = [i for kind in self.kinds for i in self._range(kind)]
            return never + [self.speech_id, *speech]
        if modality == "SPEECH":
            return [i for i in range(self.text_size) if i != self.text.eos_id] + [
                self.text_id,
                *never,
            ]
        return never

    def split(self, ids) -> list[tuple[str, list[int]]]:
        """Generated ids -> [("TEXT", text ids) | ("SPEECH", speech ids)] pieces in order; switches and
        specials (bos, eos, pad) end a piece and are dropped."""
        specials = {
            self.text.bos_id,
            self.text.eos_id,
            self.text.pad_id,
            self.text_id,
            self.speech_id,
        }
        pieces: list[tuple[str, list[int]]] = []
        for i in (int(i) for i in ids):
            modality = (
                None
                if i in specials
                else "SPEECH"
                if self.kind_of(i)
                else "TEXT"
                if i < self.text_size
                else None
            )
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

    ratios: relative weights of {"speech", "text", "interleaved", "paired"} (the reference draws a third of
    each of the first three and no paired sequence; paired: the utterance's speech then its text, or its text
    then its speech, either way at even odds);
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
        unknown = set(ratios) - set(KINDS)
        if unknown or sum(ratios.values()) <= 0 or min(ratios.values()) < 0:
            raise ValueError(
                f"interleave ratios must weigh {', '.join(KINDS)} (>= 0, not all 0); got {ratios}"
            )
        self.kinds, self.weights = list(ratios), list(ratios.values())
        self.text_span, self.speech_span = tuple(text_span_words), tuple(speech_span_words)
        self.counts: Counter = Counter()

    def draw_kind(self, rng: random.Random) -> str:
        return rng.choices(self.kinds, self.weights)[0]

    def speech(
        self, streams: dict[str, torch.Tensor], start: float = 0.0, end: float | None = None
    ) -> list[int]:
        return self.vocab.speech_ids(self.vocab.merge(streams, start, end))

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
        if kind not in KINDS:
            raise ValueError(f"unknown sequence kind {kind!r}; valid: {', '.join(KINDS)}")
        if kind == "interleaved" and not words:
            kind = rng.choice(("speech", "text"))
            self.counts["interleaved_without_word_timings"] += count
        self.counts[kind] += count
        vocab = self.vocab
        if kind != "interleaved":  # speech, text, or both whole (paired, in a drawn order)
            speech = [vocab.speech_id, *self.speech(streams)] if kind != "text" else []
            written = (
                [vocab.text_id, *vocab.text.encode(text, bos=False, eos=False)]
                if kind != "speech"
                else []
            )
            body = written + speech if kind == "paired" and rng.random() < 0.5 else speech + written
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

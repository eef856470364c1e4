"""The embedded corpus: sentences from `grammar.py` spoken by eSpeak NG voices in several styles.

Layout of `root` (all paths inside manifests are relative to `root`):

    train.jsonl val.jsonl test.jsonl     utterances; test and val sentences never occur in train
    probes/lexical.jsonl                 word vs. pronounceable non-word, same speaker (sWUGGY-like)
    probes/syntactic.jsonl               sentence vs. minimally ungrammatical twin (sBLIMP-like)
                                         both: each pair has as many words and eSpeak phones on
                                         each side (`good_phones`, `bad_phones`), as sWUGGY and
                                         sBLIMP match their pairs in length
    wav16k/*.wav wav24k/*.wav            16 kHz and 24 kHz mono PCM-16
    corpus.json                          preset, seed, counts, hours, speakers, styles, vocabulary size,
                                         probe pairs matched and left out (and why)
    artifact.json                        preset and seed, written on publishing (`artifacts.py`)
    artifacts/                           what is fitted on it later: tokenizers, judge, token cache

The same preset and seed give the same files, byte for byte.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from slmlab.artifacts import fit_once
from slmlab.constants import CORPUS_SAMPLE_RATES
from slmlab.data.espeak import EspeakSynthesizer, speak_many
from slmlab.data.grammar import (
    ADJECTIVES,
    FUNCTION_WORDS,
    NAMES,
    NOUNS,
    PLURAL_DETS,
    PREPOSITIONS,
    SINGULAR_DETS,
    Grammar,
    Sentence,
    Twin,
    nonword,
    vocabulary,
)
from slmlab.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSize:
    train: int
    val: int
    test: int
    lexical_pairs: int
    syntactic_pairs: int


PRESETS = {
    "tiny": CorpusSize(train=160, val=24, test=24, lexical_pairs=16, syntactic_pairs=16),
    "default": CorpusSize(train=2600, val=200, test=200, lexical_pairs=200, syntactic_pairs=200),
    "large": CorpusSize(train=24000, val=1000, test=1000, lexical_pairs=1000, syntactic_pairs=1000),
}
# speaker name -> eSpeak voice (language variant + voice variant)
SPEAKERS = {
    "us_m3": "en-us+m3",
    "us_f2": "en-us+f2",
    "gb_m1": "en+m1",
    "rp_f4": "en-gb-x-rp+f4",
    "scot_m2": "en-gb-scotland+m2",
    "wi_f3": "en-029+f3",
}
# style name -> eSpeak (pitch 0-100, pitch range 0-100, rate in words per minute)
STYLES = {
    "neutral": (50, 50, 165),
    "excited": (78, 95, 215),
    "sad": (32, 12, 125),
    "monotone": (45, 0, 170),
}
# a probe draws at most this many candidates (sentences or words) per requested pair, then stops short
CANDIDATES_PER_PAIR = 20
NONWORD_TRIES = 10  # non-words tried per word for one with as many phones


@dataclass
class _Job:
    id: str
    text: str
    speaker: str
    style: str


class SyntheticCorpus:
    """`data=synthetic`: synthesise the corpus into `root` once; later calls reuse it."""

    def __init__(self, root: str, preset: str = "default", seed: int = 0, workers: int = 2) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown corpus preset {preset!r}; valid presets: {sorted(PRESETS)}")
        self.root, self.preset, self.seed, self.workers = Path(root), preset, seed, workers
        self.size = PRESETS[preset]

    def manifest(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"

    def probe(self, name: str) -> Path:
        return self.root / "probes" / f"{name}.jsonl"

    @property
    def ready(self) -> bool:
        return (self.root / "corpus.json").is_file()

    def prepare(self) -> dict:
        """Synthesise unless `corpus.json` is there; return its summary. The corpus is written into a
        temporary folder next to `root` and renamed into place once whole (`artifacts.py`); a second
        process preparing the same root meanwhile waits for the first and reads its corpus."""
        if self.ready:
            return _summary(self.root)
        record = {"settings": {"preset": self.preset, "seed": self.seed}}
        return fit_once(self.root, self.synthesise, _summary, record)

    # ---------------------------------------------------------------------------------------------
    def synthesise(self, tmp: Path) -> None:
        """Write the whole corpus into the folder `tmp`."""
        started = time.perf_counter()
        rng = random.Random(self.seed)
        grammar = Grammar(rng)
        speakers, styles = sorted(SPEAKERS), sorted(STYLES)
        n_sentences = self.size.train + self.size.val + self.size.test
        sentences: dict[str, Sentence] = {}
        while len(sentences) < n_sentences:  # unique sentences, so that a split owns its texts
            sentence = grammar.sentence()
            sentences.setdefault(sentence.text, sentence)
        probe_sentences: dict[str, Sentence] = {}
        while (
            len(probe_sentences) < self.size.syntactic_pairs
        ):  # unseen, and breakable by a minimal edit
            sentence = grammar.sentence()
            if sentence.breakable and sentence.text not in sentences:
                probe_sentences.setdefault(sentence.text, sentence)
        texts = list(sentences)
        bounds = np.cumsum([0, self.size.train, self.size.val, self.size.test])
        jobs: dict[str, list[_Job]] = {}
        for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
            jobs[split] = [
                _Job(f"{split}_{i:06d}", texts[lo + i], rng.choice(speakers), rng.choice(styles))
                for i in range(hi - lo)
            ]
        phonemizer = EspeakSynthesizer()

        def phone_count(text: str, speaker: str) -> int:
            return len(phonemizer.phones(text, SPEAKERS[speaker]))

        probes: dict[str, dict] = {}  # what corpus.json reports of each probe
        syntactic_rows, jobs["syntactic"], probes["syntactic"] = [], [], _ProbeCount()
        candidates = _more_sentences(
            grammar,
            list(probe_sentences.values()),
            set(sentences),
            CANDIDATES_PER_PAIR * self.size.syntactic_pairs,
        )
        letter_balance = 0  # twins longer in letters than their sentence minus those shorter
        for sentence in candidates:
            if len(syntactic_rows) == self.size.syntactic_pairs:
                break
            speaker = rng.choice(speakers)
            good_phones = phone_count(sentence.text, speaker)
            twin = _matched_twin(
                sentence,
                good_phones,
                partial(phone_count, speaker=speaker),
                probes["syntactic"].kinds,
                rng,
            )
            if twin is None:
                probes["syntactic"].left_out["no twin with as many phones"] += 1
                continue
            # where the letters differ, as many twins are longer as shorter (to within one pair)
            longer = int(np.sign(len(twin.text) - len(sentence.text)))
            if longer * letter_balance > 0:
                probes["syntactic"].left_out["letters would unbalance the probe"] += 1
                continue
            letter_balance += longer
            probes["syntactic"].add(twin.kind, sentence.text, twin.text, twin.edits)
            pair_id = f"syn_{len(syntactic_rows):05d}"
            pair = [
                _Job(f"{pair_id}_good", sentence.text, speaker, "neutral"),
                _Job(f"{pair_id}_bad", twin.text, speaker, "neutral"),
            ]
            jobs["syntactic"] += pair
            syntactic_rows.append(
                {"id": pair_id, "kind": twin.kind, "good": pair[0].id, "bad": pair[1].id}
                | {"good_phones": good_phones, "bad_phones": good_phones}
            )
        known = vocabulary()
        lexical_rows, jobs["lexical"], probes["lexical"] = [], [], _ProbeCount()
        for word in _lexical_candidates(rng)[: CANDIDATES_PER_PAIR * self.size.lexical_pairs]:
            if len(lexical_rows) == self.size.lexical_pairs:
                break
            speaker = rng.choice(speakers)
            word_phones = phone_count(word, speaker)
            foils = [nonword(word, rng, known) for _ in range(NONWORD_TRIES)]
            foil = next((f for f in foils if f and phone_count(f, speaker) == word_phones), None)
            if foil is None:
                reason = "no non-word" if foils[0] is None else "no non-word with as many phones"
                probes["lexical"].left_out[reason] += 1
                continue
            probes["lexical"].add("nonword", word, foil, 1)
            pair_id = f"lex_{len(lexical_rows):05d}"
            pair = [
                _Job(f"{pair_id}_word", word, speaker, "neutral"),
                _Job(f"{pair_id}_nonword", foil, speaker, "neutral"),
            ]
            jobs["lexical"] += pair
            lexical_rows.append(
                {"id": pair_id, "good": pair[0].id, "bad": pair[1].id}
                | {"good_phones": word_phones, "bad_phones": word_phones}
            )
        for name, requested in (
            ("syntactic", self.size.syntactic_pairs),
            ("lexical", self.size.lexical_pairs),
        ):
            probes[name] = probes[name].report(requested)
            log.info("%s probe: %s", name, json.dumps(probes[name]))
            if probes[name]["pairs"] < requested:
                log.warning(
                    "%s probe: %d of %d pairs; the grammar ran out of length-matched candidates",
                    name,
                    probes[name]["pairs"],
                    requested,
                )

        for rate in CORPUS_SAMPLE_RATES:
            (tmp / f"wav{rate // 1000}k").mkdir(parents=True)
        all_jobs = [job for group in jobs.values() for job in group]
        log.info(
            "synthesising %d utterances with %d workers into %s",
            len(all_jobs),
            self.workers,
            self.root,
        )
        requests = [
            [
                job.text,
                SPEAKERS[job.speaker],
                *STYLES[job.style],
                str(tmp),
                job.id,
                list(CORPUS_SAMPLE_RATES),
            ]
            for job in all_jobs
        ]
        results = {
            job.id: Utterance(
                job.id,
                paths[0],
                duration,
                job.text,
                job.speaker,
                job.style,
                words,
                {"audio_filepath_24k": paths[1]},
            )
            for job, (paths, duration, words) in zip(all_jobs, speak_many(requests, self.workers))
        }

        for split in ("train", "val", "test"):
            write_manifest(tmp / f"{split}.jsonl", [results[job.id] for job in jobs[split]])
        for name, rows in (("lexical", lexical_rows), ("syntactic", syntactic_rows)):
            write_manifest(
                tmp / "probes" / f"{name}_audio.jsonl", [results[job.id] for job in jobs[name]]
            )
            with open(tmp / "probes" / f"{name}.jsonl", "w") as f:
                for row in rows:
                    good, bad = results[row["good"]], results[row["bad"]]
                    f.write(
                        json.dumps(
                            {
                                **row,
                                "good_text": good.text,
                                "bad_text": bad.text,
                                "good_audio": str(Path(good.audio_filepath).relative_to(tmp)),
                                "bad_audio": str(Path(bad.audio_filepath).relative_to(tmp)),
                                "speaker": good.speaker,
                            }
                        )
                        + "\n"
                    )
        hours = {
            split: round(sum(results[j.id].duration for j in jobs[split]) / 3600, 3)
            for split in jobs
        }
        summary = {
            "preset": self.preset,
            "seed": self.seed,
            "size": asdict(self.size),
            "hours": hours,
            "utterances": {split: len(group) for split, group in jobs.items()},
            "speakers": SPEAKERS,
            "styles": {k: dict(zip(("pitch", "range", "rate"), v)) for k, v in STYLES.items()},
            "vocabulary_size": len(known),
            "sample_rates": list(CORPUS_SAMPLE_RATES),
            "probes": probes,
        }
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info(
            "corpus ready in %.1f s: %s",
            time.perf_counter() - started,
            json.dumps(summary["utterances"]),
        )


@dataclass
class _ProbeCount:
    """The pairs a probe kept, by kind, and the candidates it left out, by reason."""

    kinds: Counter = field(default_factory=Counter)
    edits: Counter = field(default_factory=Counter)
    same_letters: int = 0
    left_out: Counter = field(default_factory=Counter)

    def add(self, kind: str, good: str, bad: str, edits: int) -> None:
        self.kinds[kind] += 1
        self.edits[edits] += 1
        self.same_letters += len(good) == len(bad)

    def report(self, requested: int) -> dict:
        return {
            "requested": requested,
            "pairs": sum(self.kinds.values()),
            "matched_in": ["words", "phones"],
            "same_letters": self.same_letters,
            "kinds": dict(sorted(self.kinds.items())),
            "edits": {str(n): count for n, count in sorted(self.edits.items())},
            "left_out": dict(sorted(self.left_out.items())),
        }


def _more_sentences(
    grammar: Grammar, first: list[Sentence], seen: set[str], limit: int
) -> Iterator[Sentence]:
    """`first`, then fresh breakable sentences that are not in `seen` and not yet drawn; `limit` in all."""
    drawn = seen | {sentence.text for sentence in first}
    yield from first[:limit]
    for _ in range(limit - len(first)):
        sentence = grammar.sentence()
        while not sentence.breakable or sentence.text in drawn:
            sentence = grammar.sentence()
        drawn.add(sentence.text)
        yield sentence


def _matched_twin(
    sentence: Sentence,
    good_phones: int,
    phone_count: Callable[[str], int],
    kinds_so_far: Counter,
    rng: random.Random,
) -> Twin | None:
    """An ungrammatical twin with `good_phones` phones (as many words by construction), None if
    there is none. Its kind is the matched kind with the fewest pairs so far, so that kinds easy to
    match (adjective order keeps every phone) do not crowd out the others; within the kind, a twin
    with as many letters, then one with fewer edits, is preferred."""
    matched = [twin for twin in sentence.twins() if phone_count(twin.text) == good_phones]
    if not matched:
        return None
    kinds = sorted({twin.kind for twin in matched})
    fewest = min(kinds_so_far[kind] for kind in kinds)
    kind = rng.choice([kind for kind in kinds if kinds_so_far[kind] == fewest])

    def cost(twin: Twin) -> tuple[bool, int]:
        return len(twin.text) != len(sentence.text), twin.edits

    of_kind = [twin for twin in matched if twin.kind == kind]
    best = min(cost(twin) for twin in of_kind)
    return rng.choice([twin for twin in of_kind if cost(twin) == best])


def _lexical_candidates(rng: random.Random) -> list[str]:
    """Words of four letters or more to make non-words of: the nouns and adjectives in a random
    order, then the other content words (verb forms, plurals, adverbs), drawn when those run out."""
    function_words = set(NAMES) | set(FUNCTION_WORDS) | set(PREPOSITIONS)
    function_words |= set(SINGULAR_DETS) | set(PLURAL_DETS)
    first = sorted(w for w in set(NOUNS) | set(ADJECTIVES) if len(w) >= 4)
    then = sorted(w for w in vocabulary() - function_words - set(first) if len(w) >= 4)
    return rng.sample(first, len(first)) + rng.sample(then, len(then))


def _summary(root: Path) -> dict:
    return json.loads((root / "corpus.json").read_text())


# -- a LibriSpeech-layout tree ----------------------------------------------------------------------
LIBRISPEECH_SUBSETS = {"train-clean-100": 0.9, "dev-clean": 0.05, "test-clean": 0.05}


def write_librispeech_like(
    root: str | Path, files: int, seed: int = 0, chapter_size: int = 50
) -> dict:
    """A LibriSpeech-layout tree of `files` utterances spoken by eSpeak NG, as `data=librispeech` reads it:
    `<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac` (16 kHz) next to
    `<speaker>-<chapter>.trans.txt` (`<utterance id> <TRANSCRIPT>` lines, upper case), over
    train-clean-100, dev-clean and test-clean (90/5/5 %, at least one file each). Each subset has its own
    speakers (an eSpeak voice at its own pitch and rate), two chapters of up to `chapter_size` utterances
    each; sentences come from `grammar.py`. One in-process engine speaks them all, a file at a time: the
    texts, speakers and layout repeat for a seed, the audio not byte for byte (the embedded corpus's
    does). `root` must not exist yet or be empty. -> {subset: {"files", "hours", "speakers"}}."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty: write a LibriSpeech-like tree into a new folder"
        )
    if files < len(LIBRISPEECH_SUBSETS):
        raise ValueError(f"files={files}: at least one per subset ({len(LIBRISPEECH_SUBSETS)})")
    rng = random.Random(seed)
    grammar, engine = Grammar(rng), EspeakSynthesizer()
    counts = {name: max(1, round(share * files)) for name, share in LIBRISPEECH_SUBSETS.items()}
    counts["train-clean-100"] = files - counts["dev-clean"] - counts["test-clean"]
    summary, speaker_id, chapter_id = {}, 100, 1000
    for subset, count in counts.items():
        seconds, speakers = 0.0, 0
        for first in range(0, count, 2 * chapter_size):  # a speaker reads two chapters
            speaker_id, speakers = speaker_id + 1, speakers + 1
            voice = SPEAKERS[sorted(SPEAKERS)[speaker_id % len(SPEAKERS)]]
            pitch, rate = rng.randint(30, 70), rng.randint(140, 200)
            for start in range(first, min(first + 2 * chapter_size, count), chapter_size):
                size, chapter_id = min(chapter_size, count - start), chapter_id + 1
                folder = root / subset / str(speaker_id) / str(chapter_id)
                folder.mkdir(parents=True)
                lines = []
                for n in range(size):
                    utterance = f"{speaker_id}-{chapter_id}-{n:04d}"
                    text = grammar.sentence().text
                    spoken = engine.synthesize(text, voice, pitch, 50, rate)
                    common = math.gcd(16000, spoken.sample_rate)
                    wav = resample_poly(spoken.wav, 16000 // common, spoken.sample_rate // common)
                    sf.write(folder / f"{utterance}.flac", np.clip(wav, -1, 1), 16000, "PCM_16")
                    seconds += len(wav) / 16000
                    lines.append(f"{utterance} {text.upper()}\n")
                (folder / f"{speaker_id}-{chapter_id}.trans.txt").write_text("".join(lines))
        summary[subset] = {"files": count, "hours": round(seconds / 3600, 3), "speakers": speakers}
        log.info("%s: %s", subset, json.dumps(summary[subset]))
    return summary

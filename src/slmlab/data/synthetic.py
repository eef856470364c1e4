"""The embedded corpus: sentences from `grammar.py` spoken by eSpeak NG voices in several styles.

Layout of `root` (all paths inside manifests are relative to `root`):

    train.jsonl val.jsonl test.jsonl     utterances; test and val sentences never occur in train
    probes/lexical.jsonl                 word vs. pronounceable non-word, same speaker (sWUGGY-like)
    probes/syntactic.jsonl               sentence vs. minimally ungrammatical twin (sBLIMP-like)
    wav16k/*.wav wav24k/*.wav            16 kHz and 24 kHz mono PCM-16
    corpus.json                          preset, seed, counts, hours, speakers, styles, vocabulary size
    artifact.json                        preset and seed, written on publishing (`artifacts.py`)
    artifacts/                           what is fitted on it later: tokenizers, judge, token cache

The same preset and seed give the same files, byte for byte.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmlab.artifacts import fit_once
from slmlab.constants import CORPUS_SAMPLE_RATES
from slmlab.data.espeak import speak_many
from slmlab.data.grammar import ADJECTIVES, NOUNS, Grammar, Sentence, nonword, vocabulary
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
            if sentence.edits and sentence.text not in sentences:
                probe_sentences.setdefault(sentence.text, sentence)
        texts = list(sentences)
        bounds = np.cumsum([0, self.size.train, self.size.val, self.size.test])
        jobs: dict[str, list[_Job]] = {}
        for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
            jobs[split] = [
                _Job(f"{split}_{i:06d}", texts[lo + i], rng.choice(speakers), rng.choice(styles))
                for i in range(hi - lo)
            ]
        syntactic_rows, jobs["syntactic"] = [], []
        for i, (text, sentence) in enumerate(probe_sentences.items()):
            bad_text, kind = sentence.ungrammatical(rng)
            speaker = rng.choice(speakers)
            pair = [
                _Job(f"syn_{i:05d}_good", text, speaker, "neutral"),
                _Job(f"syn_{i:05d}_bad", bad_text, speaker, "neutral"),
            ]
            jobs["syntactic"] += pair
            syntactic_rows.append(
                {"id": f"syn_{i:05d}", "kind": kind, "good": pair[0].id, "bad": pair[1].id}
            )
        known = vocabulary()
        candidates = sorted(w for w in set(NOUNS) | set(ADJECTIVES) if len(w) >= 4)
        lexical_rows, jobs["lexical"] = [], []
        for i, word in enumerate(
            rng.sample(candidates, min(self.size.lexical_pairs, len(candidates)))
        ):
            foil = nonword(word, rng, known)
            if foil is None:
                continue
            speaker = rng.choice(speakers)
            pair = [
                _Job(f"lex_{i:05d}_word", word, speaker, "neutral"),
                _Job(f"lex_{i:05d}_nonword", foil, speaker, "neutral"),
            ]
            jobs["lexical"] += pair
            lexical_rows.append({"id": f"lex_{i:05d}", "good": pair[0].id, "bad": pair[1].id})

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
        }
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info(
            "corpus ready in %.1f s: %s",
            time.perf_counter() - started,
            json.dumps(summary["utterances"]),
        )


def _summary(root: Path) -> dict:
    return json.loads((root / "corpus.json").read_text())

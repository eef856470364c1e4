"""The embedded corpus: grammar, voices, styles, timings, rates, held-out test text, probes matched
in length, determinism."""

import json
import random
import zlib
from collections import Counter

import soundfile as sf

from slmlab.data import synthetic
from slmlab.data.espeak import EspeakSynthesizer
from slmlab.data.grammar import (
    INTRANSITIVE_VERBS,
    NEUTRAL,
    TRANSITIVE_VERBS,
    Grammar,
    Sentence,
    nonword,
    vocabulary,
)
from slmlab.data.manifest import read_manifest
from slmlab.data.synthetic import SPEAKERS, SyntheticCorpus
from slmlab.eval.metrics import pair_accuracy


def test_grammar_has_hundreds_of_words_and_varied_shapes():
    assert len(vocabulary()) >= 300
    grammar = Grammar(random.Random(0))
    sentences = [grammar.sentence() for _ in range(2000)]
    first_words = Counter(s.words[0] for s in sentences)
    assert len({s.text for s in sentences}) > 1900  # almost never repeats
    assert {"does", "please", "there"} <= set(first_words)  # questions, imperatives, existentials
    assert len({len(s.words) for s in sentences}) >= 6


def test_ungrammatical_twin_is_a_minimal_edit():
    """A twin changes one word or two neighbours, and a two-edit twin also one noun elsewhere whose
    number is free: no verb agrees with it (a subject is followed by its verb or "who", or preceded
    by "does"/"do" and its determiner)."""
    agreeing = {"is", "are", "who"} | {
        f for v in TRANSITIVE_VERBS + INTRANSITIVE_VERBS for f in v[:2]
    }
    grammar = Grammar(random.Random(1))
    kinds, two_edits = Counter(), 0
    for _ in range(400):
        sentence = grammar.sentence()
        free = {pos: words[0] for kind, pos, words in sentence.edits if kind == NEUTRAL}
        for pos in free:
            assert not set(sentence.words[pos + 1 : pos + 2]) & agreeing, sentence.text
            assert not {"does", "do"} & set(sentence.words[max(pos - 3, 0) : pos]), sentence.text
        one_edit = {twin.text for twin in sentence.twins() if twin.edits == 1}
        for twin in sentence.twins():
            bad_words = twin.text.split()
            assert len(bad_words) == len(sentence.words) and twin.text != sentence.text
            changed = [i for i, (a, b) in enumerate(zip(sentence.words, bad_words)) if a != b]
            if twin.edits == 2:
                two_edits += 1
                flipped = [i for i in changed if free.get(i) == bad_words[i]]
                assert len(flipped) == 1
                changed.remove(flipped[0])
                bad_words[flipped[0]] = sentence.words[flipped[0]]
                assert " ".join(bad_words) in one_edit  # the flip undone leaves a one-edit twin
            assert 1 <= len(changed) <= 2 and changed[-1] - changed[0] <= 1
            kinds[twin.kind] += 1
    assert set(kinds) == {"agreement", "determiner_number", "adjective_order"}
    assert two_edits > 50


def test_a_number_flip_evens_out_an_agreement_twin():
    # "the dog sees the cat": the flip of "sees" is one phone and one letter short, unless "cat"
    # (nothing agrees with it) takes the other number
    sentence = Sentence(
        "the dog sees the cat".split(), [("agreement", 2, ["see"]), (NEUTRAL, 4, ["cats"])]
    )
    assert [(t.text, t.kind, t.edits) for t in sentence.twins()] == [
        ("the dog see the cat", "agreement", 1),
        ("the dog see the cats", "agreement", 2),
    ]
    espeak = EspeakSynthesizer()
    for voice in SPEAKERS.values():
        lengths = {len(espeak.phones(t, voice)) for t in (sentence.text, "the dog see the cats")}
        assert len(lengths) == 1, voice
    assert len(espeak.phones("the dog see the cat")) == len(espeak.phones(sentence.text)) - 1


def test_nonwords_are_unknown_and_of_the_same_length():
    rng, known = random.Random(2), vocabulary()
    for word in ["garden", "window", "teacher", "basket", "yellow"]:
        foil = nonword(word, rng, known)
        assert foil is not None and foil not in known and len(foil) == len(word)


def test_tiny_corpus_layout(tiny_corpus):
    summary = json.loads((tiny_corpus.root / "corpus.json").read_text())
    splits = {
        s: read_manifest(tiny_corpus.manifest(s), sample_rate=16000)[0]
        for s in ("train", "val", "test")
    }
    assert [len(splits[s]) for s in ("train", "val", "test")] == [160, 24, 24]
    train = splits["train"]
    assert len({r.speaker for r in train}) >= 4
    assert len({r.style for r in train}) >= 3
    train_texts = {r.text for r in train}
    assert not train_texts & {r.text for r in splits["test"]}
    assert not train_texts & {r.text for r in splits["val"]}
    for record in train[:40]:
        assert [w["word"] for w in record.words] == record.text.split()
        starts = [w["start"] for w in record.words]
        assert starts == sorted(starts) and record.words[-1]["end"] <= record.duration + 1e-3
        assert all(w["end"] > w["start"] for w in record.words)
        assert sf.info(record.audio_filepath).samplerate == 16000
        info24 = sf.info(record.extra["audio_filepath_24k"])
        assert info24.samplerate == 24000 and abs(info24.duration - record.duration) < 0.01
    assert summary["vocabulary_size"] >= 300


def _probe(corpus, name: str) -> list[dict]:
    return [json.loads(line) for line in corpus.probe(name).read_text().splitlines()]


def test_probe_sets(tiny_corpus):
    lexical, syntactic = _probe(tiny_corpus, "lexical"), _probe(tiny_corpus, "syntactic")
    assert len(lexical) == len(syntactic) == 16  # as many as the preset asks for
    known = vocabulary()
    for pair in lexical:
        assert pair["good_text"] in known and pair["bad_text"] not in known
        assert len(pair["good_text"]) == len(pair["bad_text"])
        assert (tiny_corpus.root / pair["good_audio"]).is_file() and (
            tiny_corpus.root / pair["bad_audio"]
        ).is_file()
    train_texts = {
        r.text for r in read_manifest(tiny_corpus.manifest("train"), check_audio=False)[0]
    }
    for pair in syntactic:
        assert pair["good_text"] not in train_texts
    assert len({pair["kind"] for pair in syntactic}) == 3


def test_probe_pairs_have_as_many_words_and_phones(tiny_corpus):
    """Counted again here with eSpeak in the pair's voice, not read from the rows' own fields."""
    espeak = EspeakSynthesizer()
    for name in ("lexical", "syntactic"):
        for pair in _probe(tiny_corpus, name):
            good, bad = pair["good_text"], pair["bad_text"]
            assert len(good.split()) == len(bad.split()), pair["id"]
            voice = SPEAKERS[pair["speaker"]]
            phones = [len(espeak.phones(text, voice)) for text in (good, bad)]
            assert phones == [pair["good_phones"], pair["bad_phones"]] and phones[0] == phones[1]


def _short_model_accuracy(pairs: list[dict]) -> tuple[float, float]:
    """pair_accuracy of a model preferring short items: scored by -(number of eSpeak phones in the
    pair's voice), i.e. summed log-probabilities of one constant per phone, and by -(letters)."""
    espeak = EspeakSynthesizer()
    voices = [SPEAKERS[pair["speaker"]] for pair in pairs]
    by_phones = [
        [-len(espeak.phones(pair[side], voice)) for pair, voice in zip(pairs, voices)]
        for side in ("good_text", "bad_text")
    ]
    by_letters = [[-len(pair[side]) for pair in pairs] for side in ("good_text", "bad_text")]
    return pair_accuracy(*by_phones), pair_accuracy(*by_letters)


def _no_audio(requests: list[list], workers: int) -> list:
    """`speak_many` without synthesis: the paths it would write, 1 s each, no word timings."""
    return [([f"{r[5]}/wav16k/{r[6]}.wav", f"{r[5]}/wav24k/{r[6]}.wav"], 1.0, []) for r in requests]


def test_a_model_preferring_short_sequences_scores_at_chance(tiny_corpus):
    """Exactly 0.5 by phones, and within half a pair of it by letters (where letters cannot be
    matched, twins longer and shorter are kept in balance); the old unmatched probes of this corpus
    gave 0.41 (syntactic) and 0.62 (lexical) by phones."""
    for name in ("lexical", "syntactic"):
        pairs = _probe(tiny_corpus, name)
        by_phones, by_letters = _short_model_accuracy(pairs)
        assert by_phones == 0.5, name
        assert abs(by_letters - 0.5) <= 0.5 / len(pairs), name


def test_the_default_probes_are_matched_too(tmp_path, monkeypatch):
    """The default preset's 200 + 200 pairs (text only: synthesis skipped) through the same code:
    all kept, and the short-preferring model at chance (the old probes gave it 0.35 syntactic and
    0.67 lexical by phones, 0.37 syntactic by letters)."""
    monkeypatch.setattr(synthetic, "speak_many", _no_audio)
    corpus = SyntheticCorpus(str(tmp_path / "default"), preset="default")
    probes = corpus.prepare()["probes"]
    for name in ("lexical", "syntactic"):
        assert probes[name]["pairs"] == probes[name]["requested"] == 200
        by_phones, by_letters = _short_model_accuracy(_probe(corpus, name))
        assert by_phones == 0.5, name
        assert abs(by_letters - 0.5) <= 0.5 / 200, name
    assert min(probes["syntactic"]["kinds"].values()) >= 20  # no kind crowded out


def test_unmatchable_probe_pairs_are_left_out_and_counted(tmp_path, monkeypatch):
    """With a phone count that no twin or non-word can equal, every candidate a probe may draw is
    tried, left out, and counted with its reason in corpus.json (audio synthesis is skipped)."""

    def no_two_alike(self, text, voice):
        return ["p"] * (zlib.crc32(text.encode()) % 100_003)

    monkeypatch.setattr(EspeakSynthesizer, "phones", no_two_alike)
    monkeypatch.setattr(synthetic, "speak_many", _no_audio)
    corpus = SyntheticCorpus(str(tmp_path / "corpus"), preset="tiny")
    probes = corpus.prepare()["probes"]
    tries = synthetic.CANDIDATES_PER_PAIR * 16
    assert probes["syntactic"]["pairs"] == 0 and probes["lexical"]["pairs"] == 0
    assert probes["syntactic"]["left_out"] == {"no twin with as many phones": tries}
    assert sum(probes["lexical"]["left_out"].values()) == tries
    assert corpus.probe("syntactic").read_text() == corpus.probe("lexical").read_text() == ""


def test_same_seed_gives_the_same_corpus_byte_for_byte(tiny_corpus, tmp_path):
    # Whatever ran before in this process (the session's corpus may be built before this test or by
    # it): leave the in-process engine, which the probes' phone counts use, in other voices, so a result
    # that depended on the engine's state, or on which tests ran first, would differ below.
    engine = EspeakSynthesizer()
    for voice in (SPEAKERS["scot_m2"], SPEAKERS["rp_f4"]):
        engine.phones("a stray sentence first", voice=voice)
    again = SyntheticCorpus(str(tmp_path / "again"), preset="tiny", seed=0, workers=1)
    again.prepare()
    original = sorted(
        p.relative_to(tiny_corpus.root)
        for p in tiny_corpus.root.rglob("*")
        if p.is_file() and "artifacts" not in p.parts
    )
    assert original == sorted(
        p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file()
    )
    for rel in original:
        assert (tiny_corpus.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel

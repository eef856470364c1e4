"""The embedded corpus: grammar, voices, styles, timings, rates, held-out test text, probes, determinism."""

import json
import random
from collections import Counter

import soundfile as sf

from slmlab.data.grammar import Grammar, nonword, vocabulary
from slmlab.data.manifest import read_manifest
from slmlab.data.synthetic import SyntheticCorpus


def test_grammar_has_hundreds_of_words_and_varied_shapes():
    assert len(vocabulary()) >= 300
    grammar = Grammar(random.Random(0))
    sentences = [grammar.sentence() for _ in range(2000)]
    first_words = Counter(s.words[0] for s in sentences)
    assert len({s.text for s in sentences}) > 1900  # almost never repeats
    assert {"does", "please", "there"} <= set(first_words)  # questions, imperatives, existentials
    assert len({len(s.words) for s in sentences}) >= 6


def test_ungrammatical_twin_is_a_minimal_edit():
    rng = random.Random(1)
    grammar = Grammar(rng)
    for _ in range(300):
        sentence = grammar.sentence()
        if not sentence.edits:
            continue
        bad, kind = sentence.ungrammatical(rng)
        bad_words = bad.split()
        assert kind in {"agreement", "determiner_number", "adjective_order"}
        assert len(bad_words) == len(sentence.words) and bad != sentence.text
        changed = [i for i, (a, b) in enumerate(zip(sentence.words, bad_words)) if a != b]
        assert 1 <= len(changed) <= 2 and changed[-1] - changed[0] <= 1


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


def test_probe_sets(tiny_corpus):
    lexical = [json.loads(line) for line in tiny_corpus.probe("lexical").read_text().splitlines()]
    syntactic = [
        json.loads(line) for line in tiny_corpus.probe("syntactic").read_text().splitlines()
    ]
    assert len(lexical) >= 12 and len(syntactic) == 16
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
        assert len(pair["good_text"].split()) == len(pair["bad_text"].split())


def test_same_seed_gives_the_same_corpus_byte_for_byte(tiny_corpus, tmp_path):
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

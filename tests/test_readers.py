"""One validated path for every reader: fitters, the data module and the evaluator read records through
`read_split` (data/manifest.py), so they use exactly the records training keeps, under the run's policy."""

import ast
import json
import logging

import numpy as np
import pytest
import soundfile as sf

from slmlab.data.corpora import ManifestCorpus
from slmlab.data.datamodule import SpeechDataModule
from slmlab.data.manifest import RecordPolicy, read_split
from slmlab.runs import REPO_ROOT
from slmlab.tokenizers.text import load_or_fit_bpe

PACKAGE = REPO_ROOT / "src" / "slmlab"


def test_only_the_manifest_module_calls_read_manifest():
    """Everything else reads through read_split / read_records, with the audio checks training applies."""
    callers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "read_manifest"
    )
    assert set(callers) <= {"data/manifest.py"}, callers


@pytest.fixture
def corpus(tmp_path):
    """A manifest corpus whose train split holds 3 good records and 4 that training skips."""
    for name, seconds in (("one", 1.0), ("two", 1.2), ("three", 0.8), ("long", 3.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        sf.write(tmp_path / f"{name}.wav", 0.3 * np.sin(2 * np.pi * 200 * t), 16000)
    good = [
        {"id": name, "audio_filepath": f"{name}.wav", "duration": d, "text": f"the {name} cat sat"}
        for name, d in (("one", 1.0), ("two", 1.2), ("three", 0.8))
    ]
    bad = [
        {"id": "typed", "audio_filepath": "one.wav", "duration": "1 s", "text": "typed wrong"},
        {"id": "gone", "audio_filepath": "gone.wav", "duration": 1.0, "text": "no audio here"},
        {"id": "long", "audio_filepath": "long.wav", "duration": 3.0, "text": "far too long"},
        {
            "id": "words",
            "audio_filepath": "two.wav",
            "text": "out of order",
            "words": [{"word": 1}],
        },
    ]
    for split in ("train", "val", "test"):
        lines = [json.dumps(r) for r in good + bad]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    corpus = ManifestCorpus(*(str(tmp_path / f"{s}.jsonl") for s in ("train", "val", "test")), "x")
    corpus.root = tmp_path / "root"
    corpus.record_policy = RecordPolicy(max_duration=2.0)  # what the run's datamodule settings say
    return corpus


def test_a_fitter_uses_the_records_training_keeps(corpus):
    load_or_fit_bpe(corpus, vocab_size=300, min_frequency=1)
    (fitted_on,) = (corpus.root / "artifacts" / "bpe").glob("*/fitted_on.json")
    fitted_on = json.loads(fitted_on.read_text())
    datamodule = SpeechDataModule(corpus, fields={}, max_duration=2.0)
    trained_on = datamodule._records("train")
    assert fitted_on["records"] == len(trained_on) == 3


def test_the_policy_travels_with_the_corpus_and_problems_are_logged_once(corpus, caplog):
    with caplog.at_level(logging.WARNING):
        first, report = read_split(corpus, "val")
        again, _ = read_split(corpus, "val")
    assert [r.id for r in first] == [r.id for r in again] == ["one", "two", "three"]
    assert caplog.text.count("id=long: too_long") == 1
    assert report.summary()["problems"]["skipped"] == {
        "audio_missing": 1,
        "bad_duration": 1,
        "bad_words": 1,
        "too_long": 1,
    }
    corpus.record_policy = RecordPolicy(max_duration=None)
    assert "long" in {r.id for r in read_split(corpus, "val")[0]}


def test_a_split_with_no_usable_record_is_an_error_naming_it(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio_filepath": "gone.wav", "text": "x"}) + "\n")
    corpus = ManifestCorpus(str(manifest), str(manifest), str(manifest), str(tmp_path))
    with pytest.raises(ValueError, match=r"no usable record in .*train\.jsonl.*audio_missing"):
        read_split(corpus, "train")

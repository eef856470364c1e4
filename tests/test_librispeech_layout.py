"""A LibriSpeech-layout tree spoken by eSpeak NG (`write_librispeech_like`), read by `data=librispeech`,
prepared and trained a few steps: the README's 20,000-file run, at 30 files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import soundfile as sf
from conftest import run_cli

from slmlab.data.corpora import read_librispeech
from slmlab.data.synthetic import write_librispeech_like

FILES = {"train-clean-100": 26, "dev-clean": 2, "test-clean": 2}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Written in a fresh process, as scripts/make_librispeech_like.py writes it: eSpeak's in-process
    engine carries state from whatever spoke before in this process (earlier tests), see `speak_many`."""
    root = tmp_path_factory.mktemp("LibriSpeechLike")
    write = (
        "import json, sys; from slmlab.data.synthetic import write_librispeech_like; "
        "print(json.dumps(write_librispeech_like(sys.argv[1], files=30, chapter_size=4)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", write, str(root)], capture_output=True, text=True, check=True
    )
    return root, json.loads(done.stdout.splitlines()[-1])


def test_the_tree_has_librispeech_layout(tree):
    root, summary = tree
    assert {subset: s["files"] for subset, s in summary.items()} == FILES
    for subset, count in FILES.items():
        flacs = sorted((root / subset).glob("*/*/*.flac"))
        assert len(flacs) == count
        for flac in flacs:
            speaker, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}", flac.stem), flac
            assert sf.info(str(flac)).samplerate == 16000 and sf.info(str(flac)).frames > 0
        lines = [
            line.split(" ", 1)
            for transcript in (root / subset).glob("*/*/*-*.trans.txt")
            for line in transcript.read_text().splitlines()
        ]
        assert sorted(utterance for utterance, _ in lines) == [flac.stem for flac in flacs]
        assert all(text == text.upper() and text.strip() for _, text in lines)
        records, report = read_librispeech(root / subset)
        assert {r.id: r.text for r in records} == {u: text.lower() for u, text in lines}
        assert report.skipped == 0
    speakers = {s: {p.name for p in (root / s).iterdir()} for s in FILES}
    assert not speakers["train-clean-100"] & (speakers["dev-clean"] | speakers["test-clean"])
    assert summary["train-clean-100"]["speakers"] == 4  # two chapters of 4 utterances a speaker
    with pytest.raises(FileExistsError, match="not empty"):
        write_librispeech_like(root, files=30)


def test_data_librispeech_prepares_and_trains_on_the_tree(tree, tmp_path):
    root, _ = tree
    run_cli(
        "slmlab-train",
        "experiment=tiny_text_lm",
        "data=librispeech",
        f"data.source={root}",
        f"data.root={tmp_path / 'manifests'}",
        f"paths.log_dir={tmp_path}",
        "trainer.max_steps=3",
        "datamodule.batch_size=8",
        "trainer.val_check_interval=3",
        "hydra.run.dir=" + str(tmp_path / "run"),
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    kept = {split: metrics["data"][split]["kept"] for split in ("train", "val", "test")}
    assert kept == {"train": 26, "val": 2, "test": 2}
    first = json.loads((tmp_path / "manifests" / "train.jsonl").read_text().splitlines()[0])
    assert first["text"] == first["text"].lower()
    speaker, chapter, _ = first["id"].split("-")
    transcript = root / "train-clean-100" / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
    assert f"{first['id']} {first['text'].upper()}\n" in transcript.read_text()  # lower-cased

"""Every kind of bad record is reported by manifest, line, id and reason, and counted; LibriSpeech reading."""

import json

import numpy as np
import pytest
import soundfile as sf

from slmlab.data.corpora import LibriSpeechCorpus, read_librispeech
from slmlab.data.manifest import ManifestFormatError, load_audio, read_manifest


def tone(path, seconds=1.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    return path


@pytest.fixture
def bad_manifest(tmp_path):
    tone(tmp_path / "good.wav")
    tone(tmp_path / "r8k.wav", rate=8000)
    tone(tmp_path / "long.wav", seconds=3.0)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio")
    rows = [
        {
            "id": "ok",
            "audio_filepath": "good.wav",
            "duration": 1.0,
            "text": "a good one",
            "lang": "en",
        },
        {"id": "missing", "audio_filepath": "nowhere.wav", "duration": 1.0, "text": "x"},
        {"id": "unreadable", "audio_filepath": "garbage.wav", "duration": 1.0, "text": "x"},
        {"id": "empty_audio", "audio_filepath": "empty.wav", "duration": 0.0, "text": "x"},
        {"id": "rate", "audio_filepath": "r8k.wav", "duration": 1.0, "text": "eight k"},
        {"id": "blank", "audio_filepath": "good.wav", "duration": 1.0, "text": "  "},
        {"id": "mismatch", "audio_filepath": "good.wav", "duration": 2.5, "text": "wrong duration"},
        {"id": "long", "audio_filepath": "long.wav", "duration": 3.0, "text": "too long"},
        {"id": "ok", "audio_filepath": "good.wav", "duration": 1.0, "text": "duplicate"},
        {
            "id": "timings",
            "audio_filepath": "good.wav",
            "duration": 1.0,
            "text": "late word",
            "words": [
                {"word": "late", "start": 0.1, "end": 0.4},
                {"word": "word", "start": 0.5, "end": 4.0},
            ],
        },
    ]
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_bad_record_is_reported_and_counted(bad_manifest, caplog):
    records, report = read_manifest(bad_manifest, sample_rate=16000, max_duration=2.0)
    assert [r.id for r in records] == ["ok", "rate", "mismatch"]
    assert records[0].extra == {"lang": "en"}  # unknown keys kept
    assert records[2].duration == pytest.approx(1.0)  # corrected from the audio
    summary = report.summary()
    assert (summary["records"], summary["kept"], summary["skipped"]) == (11, 3, 8)
    assert summary["problems"]["resampled"] == {"wrong_sample_rate": 1}
    assert summary["problems"]["corrected"] == {"duration_mismatch": 1}
    assert sum(summary["problems"]["skipped"].values()) == 8
    reasons = {p.id: p.reason for p in report.problems if p.action == "skipped"}
    assert reasons == {
        "missing": "audio_missing",
        "unreadable": "audio_unreadable",
        "empty_audio": "audio_empty",
        "blank": "empty_text",
        "long": "too_long",
        "ok": "duplicate_id",
        "timings": "bad_word_timings",
        None: "malformed_json",
    }
    # every problem is logged with manifest path, line number, id and reason
    assert f"{bad_manifest}:3 id=unreadable: audio_unreadable" in caplog.text
    assert f"{bad_manifest}:4 id=None: malformed_json" in caplog.text
    assert f"{bad_manifest}:7 id=blank: empty_text" in caplog.text


def test_policies_can_reject_instead(bad_manifest):
    records, report = read_manifest(
        bad_manifest,
        sample_rate=16000,
        max_duration=2.0,
        on_wrong_rate="reject",
        on_duration_mismatch="reject",
    )
    assert [r.id for r in records] == ["ok"]
    assert {p.reason for p in report.problems} >= {"wrong_sample_rate", "duration_mismatch"}
    with pytest.raises(ValueError, match="unknown policy"):
        read_manifest(bad_manifest, on_wrong_rate="drop")


def test_wrong_rate_audio_is_resampled_on_load(tmp_path):
    wav = load_audio(str(tone(tmp_path / "a.wav", rate=8000)), 16000)
    assert wav.shape == (16000,)


@pytest.mark.parametrize(
    "content", ['[{"id": "a"}]', "id,audio_filepath,text\na,a.wav,hi", "not json at all"]
)
def test_a_file_that_is_not_jsonl_fails_clearly(tmp_path, content):
    path = tmp_path / "m.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(ManifestFormatError, match=r"m\.jsonl:1 is not a JSONL manifest"):
        read_manifest(path)


def test_librispeech_folder_becomes_manifests(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for i in range(2):
        tone(chapter / f"84-121123-000{i}.flac", seconds=1.0 + i)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    records = read_librispeech(tmp_path / "LibriSpeech" / "dev-clean")
    assert [(r.id, r.speaker, r.text) for r in records] == [
        ("84-121123-0000", "84", "go do you hear"),
        ("84-121123-0001", "84", "but in less than five minutes"),
    ]
    corpus = LibriSpeechCorpus(
        str(tmp_path / "LibriSpeech"), str(tmp_path / "out"), {"val": ["dev-clean"]}
    )
    corpus.prepare()
    kept, report = read_manifest(corpus.manifest("val"))
    assert len(kept) == 2 and report.skipped == 0 and kept[1].duration == pytest.approx(2.0)

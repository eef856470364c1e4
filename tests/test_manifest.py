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
    with pytest.raises(ValueError, match=r"on_wrong_rate: Input should be 'resample' or 'reject'"):
        read_manifest(bad_manifest, on_wrong_rate="drop")


def test_wrong_rate_audio_is_resampled_on_load(tmp_path):
    wav = load_audio(str(tone(tmp_path / "a.wav", rate=8000)), 16000)
    assert wav.shape == (16000,)


@pytest.mark.parametrize(
    "content", ['[{"id": "a"}]', "id,audio_filepath,text\na,a.wav,hi", "not json at all"]
)
def test_a_file_that_is_not_jsonl_fails_clearly(tmp_path, content, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(ManifestFormatError, match=r"m\.jsonl is not a JSONL manifest.*line 1: "):
        read_manifest(path)
    assert "malformed_json" not in caplog.text  # one error for the file, not a warning per line


def test_librispeech_folder_becomes_manifests(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for i in range(2):
        tone(chapter / f"84-121123-000{i}.flac", seconds=1.0 + i)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    records, report = read_librispeech(tmp_path / "LibriSpeech" / "dev-clean")
    assert report.skipped == 0
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


GOOD = {"id": "good", "audio_filepath": "good.wav", "duration": 1.0, "text": "fine"}
WORDS = [{"word": "a", "start": 0.1, "end": 0.3}, {"word": "b", "start": 0.4, "end": 0.9}]


@pytest.mark.parametrize(
    "change, reason, detail",
    [
        (
            {"duration": "1.0"},
            "bad_duration",
            "duration: Input should be a valid number, got '1.0'",
        ),
        ({"duration": float("nan")}, "bad_duration", "duration: Input should be a finite number"),
        (
            {"duration": -1.0},
            "bad_duration",
            "duration: Input should be greater than or equal to 0",
        ),
        ({"duration": True}, "bad_duration", "duration: Input should be a valid number"),
        ({"text": 5}, "bad_text", "text: Input should be a valid string"),
        ({"text": None}, "bad_text", "text: Input should be a valid string"),
        ({"audio_filepath": None}, "bad_audio_filepath", "audio_filepath: Input should be a valid"),
        ({"speaker": ["s1"]}, "bad_speaker", "speaker: Input should be a valid string"),
        ({"id": {"n": 1}}, "bad_id", "id: Input should be a valid string"),
        ({"style": 3}, "bad_style", "style: Input should be a valid string"),
        ({"words": "a b"}, "bad_words", "words: Input should be a valid list"),
        ({"words": [{"word": "a", "start": 0.1}]}, "bad_words", "words.0.end: Field required"),
        (
            {"words": [{"word": "a", "start": 0.5, "end": 0.2}]},
            "bad_words",
            "starts at 0.5 s, after",
        ),
        (
            {"words": [{"word": "a", "start": -0.1, "end": 0.2}]},
            "bad_words",
            "words.0.start: Input",
        ),
        ({"words": WORDS[::-1]}, "bad_words", "word 1 starts at 0.1 s, before word 0 ends (0.9 s)"),
        ({"audio_filepath_24k": 24}, "bad_audio_filepath_24k", "a path is a non-empty string"),
        ({"audio_filepath_24k": "no24k.wav"}, "audio_missing", "audio_filepath_24k: no file at"),
    ],
)
def test_a_bad_field_skips_its_record_naming_the_field(tmp_path, caplog, change, reason, detail):
    tone(tmp_path / "good.wav")
    path = tmp_path / "m.jsonl"
    lines = [GOOD, {**GOOD, "id": "bad", **change}, {**GOOD, "id": "after", "words": WORDS}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records, report = read_manifest(path)
    assert [r.id for r in records] == ["good", "after"]
    assert records[1].words == WORDS
    ((problem,),) = [report.problems]
    record_id = (
        "good" if reason == "bad_id" else "bad"
    )  # an unusable id: reported by its audio's name
    assert (problem.line, problem.id, problem.reason) == (2, record_id, reason)
    assert detail in problem.detail
    assert f"{path}:2 id={record_id}: {reason} ({problem.detail}) -> skipped" in caplog.text
    assert report.summary()["problems"] == {"skipped": {reason: 1}}


def test_integer_ids_and_speakers_are_kept_as_strings(tmp_path):
    tone(tmp_path / "good.wav")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, "id": 7, "speaker": 1089}) + "\n")
    (record,), _ = read_manifest(path)
    assert (record.id, record.speaker) == ("7", "1089")


def test_a_malformed_line_is_skipped_even_the_first(tmp_path, caplog):
    tone(tmp_path / "good.wav")
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        b'{"id": "cut", "audio_fil\n[1, 2]\n\xff\xfe not utf-8\n\n' + json.dumps(GOOD).encode()
    )
    records, report = read_manifest(path)
    assert [r.id for r in records] == ["good"]
    assert [(p.line, p.reason) for p in report.problems] == [
        (n, "malformed_json") for n in (1, 2, 3)
    ]
    assert (report.total, report.kept, report.skipped) == (4, 1, 3)
    assert f"{path}:3 id=None: malformed_json" in caplog.text


def test_an_empty_manifest_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(
        ManifestFormatError, match=r"m\.jsonl is not a JSONL manifest: none of its 0"
    ):
        read_manifest(path)


def test_librispeech_reports_lines_without_audio_and_audio_without_lines(tmp_path, caplog):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    tone(chapter / "84-121123-0000.flac")
    tone(chapter / "84-121123-0002.flac")  # listed nowhere
    (chapter / "84-121123-0003.flac").write_bytes(b"not audio")
    transcript = chapter / "84-121123.trans.txt"
    transcript.write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 NO FLAC FOR ME\n84-121123-0003 BROKEN\n"
    )
    records, report = read_librispeech(tmp_path / "dev-clean")
    assert [r.id for r in records] == ["84-121123-0000"]
    assert (report.total, report.kept, report.skipped) == (4, 1, 3)
    problems = [(p.source, p.line, p.id, p.reason) for p in report.problems]
    assert problems == [
        (str(transcript), 2, "84-121123-0001", "audio_missing"),
        (str(transcript), 3, "84-121123-0003", "audio_unreadable"),
        (str(chapter / "84-121123-0002.flac"), None, "84-121123-0002", "no_transcript"),
    ]
    assert f"{transcript}:2 id=84-121123-0001: audio_missing" in caplog.text
    assert f"{chapter / '84-121123-0002.flac'} id=84-121123-0002: no_transcript" in caplog.text

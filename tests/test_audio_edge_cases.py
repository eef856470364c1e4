"""Audio and text a hand-made manifest brings, each handled by the stated policy (README, Validation):
stereo is averaged, 8-bit PCM is read as any PCM, 48 kHz is resampled (or rejected), silence and
0.1 s clips are kept, clips over `max_duration` skipped, text kept as written, paths with spaces work."""

import json
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from slmlab.data.manifest import RecordPolicy, load_audio, read_records, write_manifest

RATE = 16000


def sine(seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * 220 * t)


@pytest.fixture
def edge_manifest(tmp_path):
    """One record per edge case, audio written with soundfile; -> (manifest path, {id: audio path})."""
    (tmp_path / "my clips").mkdir()
    audio = {
        "stereo": (
            tmp_path / "stereo.wav",
            np.stack([sine(1.0), 0.5 * sine(1.0)], 1),
            RATE,
            "PCM_16",
        ),
        "pcm8": (tmp_path / "pcm8.wav", sine(1.0), RATE, "PCM_U8"),
        "rate48k": (tmp_path / "r48k.wav", sine(1.0, 48000), 48000, "PCM_16"),
        "silence": (tmp_path / "silence.wav", np.zeros(RATE), RATE, "PCM_16"),
        "short": (tmp_path / "short.wav", sine(0.1), RATE, "PCM_16"),
        "long": (tmp_path / "long.wav", sine(25.0), RATE, "PCM_16"),
        "spaces": (tmp_path / "my clips" / "a b.wav", sine(1.0), RATE, "PCM_16"),
    }
    for path, data, rate, subtype in audio.values():
        sf.write(path, data, rate, subtype=subtype)
    texts = {
        "spaces": "ÇA VA, Señor Ørsted? 東京 cafe\u0301"
    }  # upper case, accents, CJK, decomposed é
    rows = [
        {
            "id": key,
            "audio_filepath": str(path.relative_to(tmp_path)),
            "duration": len(data) / rate,
            "text": texts.get(key, f"the {key} clip"),
        }
        for key, (path, data, rate, _) in audio.items()
    ]
    manifest = tmp_path / "edge.jsonl"
    manifest.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return manifest, {key: path for key, (path, *_) in audio.items()}


def test_training_policy_keeps_every_edge_case_but_the_overlong_clip(edge_manifest):
    manifest, paths = edge_manifest
    records, report = read_records(manifest, RecordPolicy())  # training's: 16 kHz, 20 s, resample
    by_id = {r.id: r for r in records}
    assert list(by_id) == ["stereo", "pcm8", "rate48k", "silence", "short", "spaces"]
    assert by_id["short"].duration == pytest.approx(0.1)
    assert by_id["spaces"].audio_filepath == str(paths["spaces"])
    assert [(p.id, p.reason, p.action) for p in report.problems] == [
        ("rate48k", "wrong_sample_rate", "resampled"),
        ("long", "too_long", "skipped"),
    ]


def test_text_is_kept_as_written_in_nfc(edge_manifest, tmp_path):
    manifest, _ = edge_manifest
    records, _ = read_records(manifest, RecordPolicy())
    written = "ÇA VA, Señor Ørsted? 東京 café"
    assert records[-1].text == written and unicodedata.is_normalized("NFC", records[-1].text)
    again = tmp_path / "again" / "edge.jsonl"
    write_manifest(again, records)
    assert read_records(again, RecordPolicy())[0][-1].text == written


def test_other_rates_are_rejected_when_the_policy_says_so(edge_manifest):
    manifest, _ = edge_manifest
    records, report = read_records(
        manifest, RecordPolicy(on_wrong_rate="reject", max_duration=None)
    )
    assert "rate48k" not in {r.id for r in records} and "long" in {r.id for r in records}
    assert [(p.id, p.reason, p.action) for p in report.problems] == [
        ("rate48k", "wrong_sample_rate", "skipped")
    ]


def test_load_audio_averages_channels_reads_8_bit_and_resamples(edge_manifest):
    _, paths = edge_manifest
    stereo = load_audio(str(paths["stereo"]), RATE).numpy()
    np.testing.assert_allclose(stereo, 0.75 * sine(1.0), atol=1e-4)  # (1 + 0.5) / 2
    pcm8 = load_audio(str(paths["pcm8"]), RATE).numpy()
    np.testing.assert_allclose(pcm8, sine(1.0), atol=1 / 127)  # 8-bit steps
    resampled = load_audio(str(paths["rate48k"]), RATE).numpy()
    assert resampled.shape == (RATE,)
    np.testing.assert_allclose(resampled[100:-100], sine(1.0)[100:-100], atol=1e-2)
    assert not load_audio(str(paths["silence"]), RATE).any()
    assert load_audio(str(paths["spaces"]), RATE).shape == (RATE,)

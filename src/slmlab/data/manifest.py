"""Utterance records, JSONL manifests (NeMo-style keys) and their validation.

A manifest line is one JSON object: `id`, `audio_filepath` (absolute, or relative to the manifest's
folder), `duration` (s), `text`, optional `speaker`, `style`, `words` ([{"word", "start", "end"}] in s);
unknown keys are kept in `Utterance.extra` and written back.

`read_manifest` checks every record and never drops one silently: each problem is logged as
`manifest:line id=...: reason -> action` and collected in a `ManifestReport`, whose `summary()`
goes into the run's `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from slmlab.constants import SAMPLE_RATE

log = logging.getLogger(__name__)

KNOWN_KEYS = ("id", "audio_filepath", "duration", "text", "speaker", "style", "words")


class ManifestFormatError(ValueError):
    """The file is not a JSONL manifest at all (as opposed to one bad record in it)."""


@dataclass
class Utterance:
    id: str
    audio_filepath: str  # absolute path
    duration: float  # seconds
    text: str
    speaker: str | None = None
    style: str | None = None
    words: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict:
        record = {
            "id": self.id,
            "audio_filepath": _relative(self.audio_filepath, relative_to),
            "duration": round(self.duration, 4),
            "text": self.text,
        }
        for key in ("speaker", "style", "words"):
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        for key, value in self.extra.items():
            record[key] = (
                _relative(value, relative_to) if key.startswith("audio_filepath") else value
            )
        return record


def _relative(path: str, root: Path | None) -> str:
    return os.path.relpath(path, root) if root is not None else path


def write_manifest(path: str | Path, records: list[Utterance], relative_paths: bool = True) -> None:
    """Write one JSON object per line; audio paths relative to the manifest's folder by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve() if relative_paths else None
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record.to_json(root), ensure_ascii=False) + "\n")


@dataclass
class Problem:
    line: int
    id: str | None
    reason: str  # short code, counted in the summary
    detail: str
    action: str  # "skipped", "resampled" or "corrected"


@dataclass
class ManifestReport:
    path: str
    total: int = 0
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)

    def add(self, line: int, record_id: str | None, reason: str, detail: str, action: str) -> None:
        self.problems.append(Problem(line, record_id, reason, detail, action))
        log.warning(
            "%s:%d id=%s: %s (%s) -> %s", self.path, line, record_id, reason, detail, action
        )

    @property
    def skipped(self) -> int:
        return sum(p.action == "skipped" for p in self.problems)

    def summary(self) -> dict:
        by_action: dict[str, Counter] = {}
        for p in self.problems:
            by_action.setdefault(p.action, Counter())[p.reason] += 1
        return {
            "manifest": self.path,
            "records": self.total,
            "kept": self.kept,
            "skipped": self.skipped,
            "problems": {
                action: dict(sorted(counts.items())) for action, counts in sorted(by_action.items())
            },
        }


def read_manifest(
    path: str | Path,
    *,
    sample_rate: int | None = SAMPLE_RATE,
    max_duration: float | None = None,
    on_wrong_rate: str = "resample",
    on_duration_mismatch: str = "correct",
    duration_tolerance: float = 0.1,
    check_audio: bool = True,
) -> tuple[list[Utterance], ManifestReport]:
    """Read and validate a JSONL manifest.

    Policies: a file at another sample rate is kept and resampled on load (`on_wrong_rate="resample"`)
    or skipped (`"reject"`); a `duration` that disagrees with the audio by more than
    `duration_tolerance` s is replaced by the true one (`on_duration_mismatch="correct"`) or skipped
    (`"reject"`). Missing, unreadable or empty audio, empty text, a duplicate id, word timings outside
    the audio and utterances longer than `max_duration` s are always skipped.
    """
    if on_wrong_rate not in ("resample", "reject") or on_duration_mismatch not in (
        "correct",
        "reject",
    ):
        raise ValueError(
            f"unknown policy: on_wrong_rate={on_wrong_rate!r} (resample|reject), "
            f"on_duration_mismatch={on_duration_mismatch!r} (correct|reject)"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    report = ManifestReport(str(path))
    records: list[Utterance] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    for n, line in lines:
        report.total += 1
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        except ValueError as err:
            if not records and not report.problems:
                raise ManifestFormatError(
                    f"{path}:{n} is not a JSONL manifest: the first record does not parse as a JSON "
                    f"object ({err}). Expected one object per line, e.g. "
                    '{"id": "u1", "audio_filepath": "a.wav", "duration": 1.2, "text": "hello"}'
                ) from None
            report.add(n, None, "malformed_json", str(err), "skipped")
            continue
        record = _check_record(
            raw,
            n,
            path,
            report,
            seen,
            sample_rate,
            max_duration,
            on_wrong_rate,
            on_duration_mismatch,
            duration_tolerance,
            check_audio,
        )
        if record is not None:
            seen[record.id] = n
            records.append(record)
    report.kept = len(records)
    return records, report


def _check_record(
    raw,
    n,
    path,
    report,
    seen,
    sample_rate,
    max_duration,
    on_wrong_rate,
    on_duration_mismatch,
    duration_tolerance,
    check_audio,
) -> Utterance | None:
    audio = raw.get("audio_filepath")
    record_id = str(raw.get("id") or (Path(audio).stem if audio else f"line{n}"))

    def skip(reason: str, detail: str) -> None:
        report.add(n, record_id, reason, detail, "skipped")

    if not audio:
        return skip("missing_field", "no audio_filepath")
    if record_id in seen:
        return skip("duplicate_id", f"first seen on line {seen[record_id]}")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        return skip("empty_text", "text is missing or blank")
    audio_path = Path(audio) if os.path.isabs(audio) else (path.parent / audio)
    audio_path = audio_path.resolve()
    duration = raw.get("duration")
    if check_audio:
        if not audio_path.is_file():
            return skip("audio_missing", f"no file at {audio_path}")
        try:
            info = sf.info(str(audio_path))
        except (
            Exception
        ) as err:  # soundfile raises LibsndfileError/RuntimeError for unreadable files
            return skip("audio_unreadable", f"{audio_path}: {err}")
        if info.frames == 0:
            return skip("audio_empty", f"{audio_path} has no samples")
        true_duration = info.frames / info.samplerate
        if sample_rate is not None and info.samplerate != sample_rate:
            if on_wrong_rate == "reject":
                return skip("wrong_sample_rate", f"{info.samplerate} Hz, expected {sample_rate} Hz")
            report.add(
                n,
                record_id,
                "wrong_sample_rate",
                f"{info.samplerate} Hz, resampled to {sample_rate} Hz on load",
                "resampled",
            )
        if duration is None or abs(float(duration) - true_duration) > duration_tolerance:
            if duration is not None and on_duration_mismatch == "reject":
                return skip(
                    "duration_mismatch",
                    f"manifest says {duration} s, audio is {true_duration:.3f} s",
                )
            if duration is not None:
                report.add(
                    n,
                    record_id,
                    "duration_mismatch",
                    f"manifest says {duration} s, audio is {true_duration:.3f} s; using the audio's",
                    "corrected",
                )
            duration = true_duration
    if duration is None or float(duration) <= 0:
        return skip("audio_empty", f"duration {duration}")
    duration = float(duration)
    if max_duration is not None and duration > max_duration:
        return skip("too_long", f"{duration:.2f} s > max_duration {max_duration} s")
    words = raw.get("words")
    if words is not None and any(
        not (0 <= w["start"] <= w["end"] <= duration + duration_tolerance) for w in words
    ):
        return skip("bad_word_timings", "a word's start/end lies outside the audio")
    extra = {k: v for k, v in raw.items() if k not in KNOWN_KEYS}
    for (
        key,
        value,
    ) in extra.items():  # other audio paths (e.g. audio_filepath_24k) resolve like the main one
        if key.startswith("audio_filepath") and isinstance(value, str) and not os.path.isabs(value):
            extra[key] = str((path.parent / value).resolve())
    return Utterance(
        record_id,
        str(audio_path),
        duration,
        text.strip(),
        raw.get("speaker"),
        raw.get("style"),
        words,
        extra,
    )


def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """wav: float32 [T] at `sample_rate`, channels averaged (soundfile I/O; torchaudio.load needs torchcodec)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wav = AF.resample(wav, rate, sample_rate)
    return wav


def audio_path(record) -> str:
    """The record's 24 kHz file when the corpus has one (the embedded corpus does), else its main file."""
    return record.extra.get("audio_filepath_24k") or record.audio_filepath

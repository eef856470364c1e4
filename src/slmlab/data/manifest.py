"""Utterance records, JSONL manifests (NeMo-style keys) and their validation.

A manifest line is one JSON object: `id`, `audio_filepath` (absolute, or relative to the manifest's
folder), `duration` (s), `text`, optional `speaker`, `style`, `words` ([{"word", "start", "end"}] in s);
unknown keys are kept in `Utterance.extra` and written back. `Record` is its schema (pydantic).

`read_manifest` checks every record and never drops one silently: each problem is logged as
`manifest:line id=...: reason (detail) -> action` and collected in a `ManifestReport`, whose `summary()`
goes into the run's `metrics.json`. `read_split` is the one path every reader takes (fitters, the data
module, the evaluator): the same checks as training, under the run's `RecordPolicy`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import reprlib
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slmlab.constants import SAMPLE_RATE

log = logging.getLogger(__name__)

KNOWN_KEYS = ("id", "audio_filepath", "duration", "text", "speaker", "style", "words")
EXAMPLE_LINE = '{"id": "u1", "audio_filepath": "a.wav", "duration": 1.2, "text": "hello"}'


class ManifestFormatError(ValueError):
    """The file is not a JSONL manifest at all (as opposed to one bad record in it)."""


# -- the schema of a line ---------------------------------------------------------------------------
def _integer_as_name(value):
    """ids and speakers may be written as integers (LibriSpeech speakers are); they are kept as strings."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Name = Annotated[str, BeforeValidator(_integer_as_name), Field(min_length=1)]


class Word(BaseModel):
    """One `words` entry: the word and where it lies in the audio (s); other keys are kept."""

    model_config = ConfigDict(strict=True, extra="allow")
    word: str = Field(min_length=1)
    start: Seconds
    end: Seconds

    @model_validator(mode="after")
    def _starts_before_it_ends(self) -> Word:
        if self.start > self.end:
            raise ValueError(f"starts at {self.start} s, after it ends at {self.end} s")
        return self


class Record(BaseModel):
    """One manifest line as written: JSON types checked strictly (a number is not a string), times finite
    and non-negative, words in time order. Unknown keys are allowed and kept in `model_extra`."""

    model_config = ConfigDict(strict=True, extra="allow")
    id: Name | None = None
    audio_filepath: str = Field(min_length=1)
    duration: Seconds | None = None
    text: str
    speaker: Name | None = None
    style: str | None = None
    words: list[Word] | None = None

    @field_validator("words")
    @classmethod
    def _in_time_order(cls, words: list[Word] | None) -> list[Word] | None:
        for i, (before, after) in enumerate(zip(words or [], (words or [])[1:]), start=1):
            if after.start < before.end:
                raise ValueError(
                    f"word {i} starts at {after.start} s, before word {i - 1} ends ({before.end} s)"
                )
        return words


class RecordPolicy(BaseModel):
    """What the reader does with audio that is not as expected: the data module's settings (`datamodule.*`
    in conf/train.yaml; its other keys are ignored here), defaults as there."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    sample_rate: int | None = Field(SAMPLE_RATE, gt=0)
    max_duration: float | None = Field(20.0, gt=0)  # s; longer utterances are skipped
    on_wrong_rate: Literal["resample", "reject"] = "resample"
    on_duration_mismatch: Literal["correct", "reject"] = "correct"
    duration_tolerance: float = Field(0.1, ge=0)  # s

    @classmethod
    def of(cls, corpus) -> RecordPolicy:
        """The run's policy, attached to the corpus as `corpus.record_policy`; training's defaults if none."""
        return getattr(corpus, "record_policy", None) or cls()


# -- records ----------------------------------------------------------------------------------------
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
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json(root), ensure_ascii=False) + "\n")


# -- reports ----------------------------------------------------------------------------------------
@dataclass
class Problem:
    line: int | None  # None for a problem with no line (a LibriSpeech flac nobody lists)
    id: str | None
    reason: str  # short code, counted in the summary
    detail: str
    action: str  # "skipped", "resampled" or "corrected"
    source: str | None = None  # the file the line is in, when not the report's own


@dataclass
class ManifestReport:
    path: str
    total: int = 0
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)

    def add(
        self,
        line: int | None,
        record_id: str | None,
        reason: str,
        detail: str,
        action: str,
        source: str | None = None,
    ) -> None:
        self.problems.append(Problem(line, record_id, reason, detail, action, source))
        where = source or self.path
        if line is not None:
            where = f"{where}:{line}"
        log.warning("%s id=%s: %s (%s) -> %s", where, record_id, reason, detail, action)

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


# -- reading ----------------------------------------------------------------------------------------
class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


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
    """Read and validate a JSONL manifest: records kept (in file order) and the report of the others.

    A line that is not a JSON object, or whose fields break `Record` (`bad_<field>`), is skipped. Policies:
    a file at another sample rate is kept and resampled on load (`on_wrong_rate="resample"`) or skipped
    (`"reject"`); a `duration` that disagrees with the audio by more than `duration_tolerance` s is
    replaced by the true one (`on_duration_mismatch="correct"`) or skipped (`"reject"`). Missing,
    unreadable or empty audio (any `audio_filepath*` key), blank text, a duplicate id, word timings
    outside the audio and utterances longer than `max_duration` s are always skipped. Text is kept as
    written (case, accents, punctuation), Unicode NFC-normalised and stripped; silent audio is kept.
    Raises ManifestFormatError, naming the file, when no line of it is a JSON object.
    """
    try:
        policy = RecordPolicy(
            sample_rate=sample_rate,
            max_duration=max_duration,
            on_wrong_rate=on_wrong_rate,
            on_duration_mismatch=on_duration_mismatch,
            duration_tolerance=duration_tolerance,
        )
    except ValidationError as err:
        raise ValueError(f"bad record policy: {_describe(err)}") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    report = ManifestReport(str(path))
    records: list[Utterance] = []
    seen: dict[str, int] = {}
    unparsed: list[tuple[int, str]] = []  # held until a line parses: else the file is refused whole
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        report.total += 1
        try:
            raw = json.loads(line.decode("utf-8-sig"))  # -sig: a byte-order mark some editors write
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        except (
            ValueError,
            RecursionError,
        ) as err:  # UnicodeDecodeError and JSONDecodeError included
            if unparsed is not None:
                unparsed.append((n, str(err)))
            else:
                report.add(n, None, "malformed_json", str(err), "skipped")
            continue
        if unparsed is not None:
            for m, error in unparsed:
                report.add(m, None, "malformed_json", error, "skipped")
            unparsed = None
        record_id = _record_id(raw, n)
        try:
            record = _check_record(raw, record_id, path, report, n, seen, policy, check_audio)
        except _Skip as skip:
            report.add(n, record_id, skip.reason, skip.detail, "skipped")
            continue
        seen[record.id] = n
        records.append(record)
    if unparsed is not None:
        first = f"; line {unparsed[0][0]}: {unparsed[0][1]}" if unparsed else ""
        raise ManifestFormatError(
            f"{path} is not a JSONL manifest: none of its {report.total} non-blank lines is a JSON "
            f"object{first}. Expected one object per line, e.g. {EXAMPLE_LINE}"
        )
    report.kept = len(records)
    return records, report


def read_split(
    corpus, split: str, policy: RecordPolicy | None = None
) -> tuple[list[Utterance], ManifestReport]:
    """The validated records of `corpus.manifest(split)` under `policy` (default `RecordPolicy.of(corpus)`):
    the path every reader takes, so fitting, caching, training and evaluation use the same records."""
    return read_records(corpus.manifest(split), policy or RecordPolicy.of(corpus))


def read_labels(corpus, split: str) -> list[Utterance]:
    """The records of `corpus.manifest(split)` read without opening their audio (fields, ids, text and word
    timings checked as `read_split` checks them): for what needs only their texts and labels, such as the
    trivial baselines or whether a corpus has styles, where the training audio is not (a run evaluated
    away from its corpus). Anything that reads their audio takes `read_split`."""
    policy = RecordPolicy.of(corpus).model_dump() | {"check_audio": False}
    return read_manifest(corpus.manifest(split), **policy)[0]


def read_records(path: str | Path, policy: RecordPolicy) -> tuple[list[Utterance], ManifestReport]:
    """`read_manifest` with audio checks under `policy`, once per process and version of the file (its
    problems are logged once, however many readers ask); a file with no usable record is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    stat = path.stat()
    records, report = _read_once(
        str(path.resolve()), (stat.st_mtime_ns, stat.st_size, stat.st_ino), policy
    )
    if not records:
        raise ValueError(f"no usable record in {path}: {json.dumps(report.summary())}")
    return list(records), report


@functools.lru_cache(maxsize=32)
def _read_once(path: str, version: tuple, policy: RecordPolicy):
    records, report = read_manifest(path, **policy.model_dump())
    return tuple(records), report


def _record_id(raw: dict, n: int) -> str:
    """The id to report a record by: its own, else its audio file's stem, else its line."""
    record_id, audio = raw.get("id"), raw.get("audio_filepath")
    if isinstance(record_id, (str, int)) and not isinstance(record_id, bool) and record_id != "":
        return str(record_id)
    return Path(audio).stem if isinstance(audio, str) and audio else f"line{n}"


def _describe(err: ValidationError) -> str:
    """Every field at fault, what is wrong with it and what it holds (shortened)."""
    details = []
    for e in err.errors(include_url=False):
        where = ".".join(map(str, e["loc"])) or "record"
        got = "" if e["type"] == "missing" else f", got {reprlib.repr(e['input'])}"
        details.append(f"{where}: {e['msg']}{got}")
    return "; ".join(details)


def _resolve(audio: str, root: Path) -> Path:
    """An audio path as written (absolute, or relative to the manifest's folder) -> absolute, no I/O."""
    return Path(os.path.abspath(audio if os.path.isabs(audio) else root / audio))


def _audio_info(path: Path, key: str = "audio_filepath"):
    """soundfile's header of `path`; a missing, unreadable or empty file skips the record."""
    try:
        exists = path.is_file()
        info = sf.info(str(path)) if exists else None
    except (
        OSError,
        ValueError,
        RuntimeError,
    ) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise _Skip("audio_unreadable", f"{key}: {path}: {err}") from None
    if info is None:
        raise _Skip("audio_missing", f"{key}: no file at {path}")
    if info.frames == 0:
        raise _Skip("audio_empty", f"{key}: {path} has no samples")
    return info


def _check_record(
    raw: dict,
    record_id: str,
    manifest: Path,
    report: ManifestReport,
    n: int,
    seen: dict[str, int],
    policy: RecordPolicy,
    check_audio: bool,
) -> Utterance:
    """The record as an Utterance, or _Skip; resampling and corrected durations are reported here."""
    try:
        record = Record.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        raise _Skip(f"bad_{first[0] if first else 'record'}", _describe(err)) from None
    if record_id in seen:
        raise _Skip("duplicate_id", f"first seen on line {seen[record_id]}")
    text = unicodedata.normalize("NFC", record.text).strip()
    if not text:
        raise _Skip("empty_text", "text is blank")
    audio = _resolve(record.audio_filepath, manifest.parent)
    extra = dict(record.model_extra)
    for (
        key,
        value,
    ) in extra.items():  # other audio paths (e.g. audio_filepath_24k) resolve like the main one
        if key.startswith("audio_filepath"):
            if not isinstance(value, str) or not value:
                raise _Skip(f"bad_{key}", f"{key}: a path is a non-empty string, got {value!r}")
            extra[key] = str(_resolve(value, manifest.parent))
    duration = record.duration
    if check_audio:
        info = _audio_info(audio)
        for key, value in extra.items():
            if key.startswith("audio_filepath"):
                _audio_info(Path(value), key)
        true_duration = info.frames / info.samplerate
        if policy.sample_rate is not None and info.samplerate != policy.sample_rate:
            if policy.on_wrong_rate == "reject":
                raise _Skip(
                    "wrong_sample_rate", f"{info.samplerate} Hz, expected {policy.sample_rate} Hz"
                )
            detail = f"{info.samplerate} Hz, resampled to {policy.sample_rate} Hz on load"
            report.add(n, record_id, "wrong_sample_rate", detail, "resampled")
        if duration is None:
            duration = true_duration
        elif abs(duration - true_duration) > policy.duration_tolerance:
            detail = f"manifest says {duration} s, audio is {true_duration:.3f} s"
            if policy.on_duration_mismatch == "reject":
                raise _Skip("duration_mismatch", detail)
            report.add(
                n, record_id, "duration_mismatch", f"{detail}; using the audio's", "corrected"
            )
            duration = true_duration
    if duration is None or duration <= 0:
        raise _Skip("audio_empty", f"duration {duration}")
    if policy.max_duration is not None and duration > policy.max_duration:
        raise _Skip("too_long", f"{duration:.2f} s > max_duration {policy.max_duration} s")
    words = [w.model_dump() for w in record.words] if record.words is not None else None
    if words and words[-1]["end"] > duration + policy.duration_tolerance:
        raise _Skip(
            "bad_word_timings", f"the last word ends at {words[-1]['end']} s, after the audio"
        )
    return Utterance(
        record_id, str(audio), duration, text, record.speaker, record.style, words, extra
    )


# -- audio ------------------------------------------------------------------------------------------
def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """wav: float32 [T] in [-1, 1] at `sample_rate`: any format libsndfile reads (8-bit to float PCM),
    channels averaged, other rates resampled (soundfile I/O; torchaudio.load needs torchcodec)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wav = AF.resample(wav, rate, sample_rate)
    return wav


def audio_path(record) -> str:
    """The record's 24 kHz file when the corpus has one (the embedded corpus does), else its main file."""
    return record.extra.get("audio_filepath_24k") or record.audio_filepath


# -- fitting on a bounded share of a split ---------------------------------------------------------
def fitting_subset(
    records: list[Utterance], max_hours: float, seed: int = 0
) -> tuple[list[Utterance], dict]:
    """At most `max_hours` of audio from `records` (validated ones, from `read_split`), so that a fitter's
    time and memory stop growing with the corpus: all of them when they fit, else a random subset (seeded;
    at least one record) in file order. -> (records, usage): utterances and hours used, of how many, and
    the cap, for the artifact's record and the log."""
    durations = np.array([r.duration for r in records])
    if durations.sum() <= max_hours * 3600:
        chosen = records
    else:
        order = np.random.default_rng(seed).permutation(len(records))
        count = int(np.searchsorted(np.cumsum(durations[order]), max_hours * 3600, side="right"))
        chosen = [records[i] for i in sorted(order[: max(1, count)])]
    usage = {
        "utterances": len(chosen),
        "hours": round(sum(r.duration for r in chosen) / 3600, 4),
        "of_utterances": len(records),
        "of_hours": round(float(durations.sum()) / 3600, 4),
        "max_hours": max_hours,
    }
    return chosen, usage


class AudioOf:
    """The audio of `records` at `sample_rate`, each file read when asked for (`[i]`, or one at a time while
    iterating, as often as a fitter passes over it): no list of waveforms in memory. `path` picks the file
    of a record (`audio_path` for the 24 kHz one)."""

    def __init__(
        self, records: list[Utterance], sample_rate: int, path=lambda r: r.audio_filepath
    ) -> None:
        self.records, self.sample_rate, self.path = records, sample_rate, path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_audio(self.path(self.records[i]), self.sample_rate)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

"""Property-based: whatever a manifest holds, the reader does not raise (except the documented refusal of
a file in which no line is a JSON object) and accounts for every line: kept + skipped == lines."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmlab.data.manifest import ManifestFormatError, read_manifest

SETTINGS = settings(
    max_examples=500,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=2)
    | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=3,
)
# records: plausible (times any float, NaN and infinities included; real and missing audio), plausible
# but for one field holding a random JSON value, or random JSON values in every field and unknown keys
times = st.floats(min_value=0, max_value=3) | st.floats()
ordered_words = (
    st.lists(st.floats(min_value=0, max_value=1.2), max_size=6)  # the real clips last 1 s
    .map(sorted)
    .map(lambda t: [{"word": "w", "start": a, "end": b} for a, b in zip(t[::2], t[1::2])])
)
words = (
    ordered_words
    | ordered_words.flatmap(st.permutations)
    | st.lists(st.fixed_dictionaries({"word": st.text(), "start": times, "end": times}), max_size=3)
)
plausible = {
    "id": st.text(min_size=1, max_size=3),
    "audio_filepath": st.sampled_from(
        ["a.wav", "a.wav", "b 8k.wav", "b 8k.wav", "missing.wav", "", "/"]
    ),
    "duration": times,
    "text": st.text(min_size=1, max_size=8),
    "speaker": st.text(max_size=3) | st.integers(),
    "style": st.text(max_size=3),
    "words": words,
    "audio_filepath_24k": st.sampled_from(["a.wav", "a.wav", "missing.wav"]),
}
required = ("audio_filepath", "text", "words")
plausible_records = st.fixed_dictionaries(
    {key: plausible[key] for key in required},
    optional={key: value for key, value in plausible.items() if key not in required},
)
one_field_random = st.tuples(plausible_records, st.sampled_from(list(plausible)), json_values).map(
    lambda t: {**t[0], t[1]: t[2]}
)
random_records = st.tuples(
    st.dictionaries(st.text(max_size=4), json_values, max_size=2),
    st.fixed_dictionaries({}, optional={key: json_values for key in plausible}),
).map(lambda pair: {**pair[0], **pair[1]})
records = plausible_records | one_field_random | random_records
record_lines = records.map(lambda record: json.dumps(record).encode())  # NaN/Infinity as JSON5 does


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("properties")
    sf.write(folder / "a.wav", 0.1 * np.ones(16000), 16000)
    sf.write(folder / "b 8k.wav", 0.1 * np.ones(8000), 8000)
    return folder


def lines_of(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip())


def read(folder, lines: list[bytes]):
    path = folder / "m.jsonl"
    path.write_bytes(b"\n".join(lines))
    return read_manifest(path, max_duration=2.0), lines_of(path.read_bytes())


def assert_accounted(records, report, lines: int) -> None:
    assert report.total == lines
    assert report.kept + report.skipped == lines == len(records) + report.skipped
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert r.text.strip() and 0 < r.duration <= 2.0 and math.isfinite(r.duration)
        ends = [0.0] + [t for w in r.words or [] for t in (w["start"], w["end"])]
        assert ends == sorted(ends) and ends[-1] <= r.duration + 0.1  # in order, within the audio


@SETTINGS
@given(lines=st.lists(record_lines, min_size=1, max_size=4))
def test_records_with_random_values_never_raise_and_every_line_is_counted(folder, lines):
    (records, report), count = read(folder, lines)
    assert_accounted(records, report, count)


@SETTINGS
@given(lines=st.lists(st.binary(max_size=20) | record_lines, min_size=1, max_size=4))
def test_random_bytes_lines_are_skipped_or_the_file_refused(folder, lines):
    try:
        (records, report), count = read(folder, lines)
    except ManifestFormatError as err:
        assert str(folder / "m.jsonl") in str(err)
        assert not any(line.startswith(b"{") and line.rstrip().endswith(b"}") for line in lines)
        return
    assert_accounted(records, report, count)

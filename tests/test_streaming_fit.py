"""Memory flat in corpus size: every fitter reads at most its cap of train audio (`max_hours`), a file at a
time, and k-means at most `max_frames` frames of it; the token cache is written and read in shards."""

from __future__ import annotations

import json
import logging
import math
import weakref
from pathlib import Path

import pytest
import torch

import slmlab.data.datamodule as datamodule_module
import slmlab.data.manifest as manifest_module
import slmlab.tokenizers.units as units_module
from slmlab.data.corpora import ManifestCorpus
from slmlab.data.datamodule import SpeechDataModule
from slmlab.data.fields import TextIdsField
from slmlab.data.manifest import fitting_subset, read_split
from slmlab.eval.judge import load_or_fit_judge
from slmlab.eval.style import load_or_fit_style_classifier
from slmlab.tokenizers.codecs import load_or_fit_builtin_codec
from slmlab.tokenizers.text import load_or_fit_bpe
from slmlab.tokenizers.unit_vocoder import load_or_fit_unit_vocoder
from slmlab.tokenizers.units import load_or_fit_speech_tokenizer, sample_rows

CAP_HOURS = 0.02  # 72 s of the tiny corpus's 353 s of train audio
TINY_JUDGE = {"dim": 16, "layers": 1, "heads": 2, "ffn_dim": 32, "kernel_size": 7}


@pytest.fixture
def corpus(tiny_corpus, tmp_path) -> ManifestCorpus:
    """The tiny corpus's manifests with its own artifacts folder, so that every fit here is a new one."""
    manifests = (str(tiny_corpus.manifest(s)) for s in ("train", "val", "test"))
    return ManifestCorpus(*manifests, root=str(tmp_path / "root"))


class ReadLog:
    """Stands in for `manifest.load_audio`: which files were read, and at most how many waveforms of the
    files in `watched` were alive at once (each tensor it hands out, until it is freed)."""

    def __init__(self, load_audio, watched: set[str]) -> None:
        self.load_audio, self.watched, self.paths, self.alive, self.peak = (
            load_audio,
            watched,
            [],
            0,
            0,
        )

    def __call__(self, path: str, sample_rate: int) -> torch.Tensor:
        wav = self.load_audio(path, sample_rate)
        self.paths.append(path)
        if path in self.watched:
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            weakref.finalize(wav, self._freed)
        return wav

    def _freed(self) -> None:
        self.alive -= 1


def fitted_on(corpus: ManifestCorpus, kind: str) -> dict:
    (record,) = (Path(corpus.root) / "artifacts" / kind).glob("*/artifact.json")
    return json.loads(record.read_text())["fitted_on"]


def test_a_subset_for_fitting_stays_under_its_cap_in_file_order(tiny_corpus):
    records, _ = read_split(tiny_corpus, "train")
    total = sum(r.duration for r in records)
    assert fitting_subset(records, total / 3600 + 1)[0] == records  # under the cap: all, in order
    chosen, usage = fitting_subset(records, CAP_HOURS, seed=0)
    seconds = sum(r.duration for r in chosen)
    assert seconds <= CAP_HOURS * 3600 < seconds + max(r.duration for r in records)
    assert [r.id for r in chosen] == [r.id for r in records if r in chosen]  # file order
    assert usage == {
        "utterances": len(chosen),
        "hours": round(seconds / 3600, 4),
        "of_utterances": len(records),
        "of_hours": round(total / 3600, 4),
        "max_hours": CAP_HOURS,
    }
    assert fitting_subset(records, CAP_HOURS, seed=0)[0] == chosen
    assert fitting_subset(records, CAP_HOURS, seed=1)[0] != chosen
    assert len(fitting_subset(records, 1e-6)[0]) == 1  # a cap under one utterance still fits on one


def test_rows_are_sampled_as_from_their_concatenation():
    chunks = [torch.randn(n, 3) for n in (5, 0, 17, 1, 9)]
    whole = torch.cat(chunks)
    assert torch.equal(sample_rows(iter(chunks), 32, 32), whole)  # under the cap: all, in order
    picks = torch.randperm(32, generator=torch.Generator().manual_seed(4))[:10]
    assert torch.equal(sample_rows(iter(chunks), 32, 10, seed=4), whole[picks])
    with pytest.raises(ValueError, match="expected 33 rows, the chunks held 32"):
        sample_rows(iter(chunks), 33, 10)


def fit_units(corpus):
    return load_or_fit_speech_tokenizer(
        corpus, n_units=8, n_styles=2, max_hours=CAP_HOURS, max_frames=300
    )


FITTERS = {  # kind of artifact -> fit on `corpus` under the cap, and the rate of the audio it reads
    "units": (fit_units, 16000),
    "unit_vocoder": (
        lambda corpus: load_or_fit_unit_vocoder(
            corpus, fit_units(corpus), epochs=1, batch_size=4, dim=16, layers=1, max_hours=CAP_HOURS
        ),
        16000,
    ),
    "codec": (
        lambda corpus: load_or_fit_builtin_codec(
            corpus, num_codebooks=2, cardinality=8, max_hours=CAP_HOURS, max_frames=200
        ),
        24000,
    ),
    "judge": (
        lambda corpus: load_or_fit_judge(
            corpus, model=TINY_JUDGE, epochs=1, batch_size=4, max_hours=CAP_HOURS
        ),
        16000,
    ),
    "style_classifier": (
        lambda corpus: load_or_fit_style_classifier(corpus, max_hours=CAP_HOURS),
        16000,
    ),
}


@pytest.mark.parametrize("kind", FITTERS)
def test_a_fitter_reads_at_most_its_cap_one_file_at_a_time(corpus, kind, monkeypatch):
    fit, rate = FITTERS[kind]
    train = {r.audio_filepath: r for r in read_split(corpus, "train")[0]}
    if rate == 24000:
        train = {r.extra["audio_filepath_24k"]: r for r in train.values()}
    reads = ReadLog(manifest_module.load_audio, set(train))
    monkeypatch.setattr(manifest_module, "load_audio", reads)
    pools = []  # the number of frames of each k-means fit
    kmeans = units_module.kmeans

    def counting_kmeans(x, k, *args, **kwargs):
        pools.append(len(x))
        return kmeans(x, k, *args, **kwargs)

    monkeypatch.setattr(units_module, "kmeans", counting_kmeans)
    monkeypatch.setattr("slmlab.tokenizers.codecs.kmeans", counting_kmeans)
    fit(corpus)

    read = {path for path in reads.paths if path in train}
    usage = fitted_on(corpus, kind)
    assert 0 < len(read) == usage["utterances"] < usage["of_utterances"] == len(train)
    assert sum(train[p].duration for p in read) <= CAP_HOURS * 3600
    assert usage["hours"] == round(sum(train[p].duration for p in read) / 3600, 4)
    # the waveform in use and the next one being read (all of them: the cap's ~33 before streaming)
    assert reads.peak <= 2, f"{reads.peak} train waveforms in memory at once"
    if kind == "units":
        assert pools[0] == 300  # the unit k-means: max_frames of the cap's ~1,800 frames
    if kind == "codec":
        assert pools == [200, 200]  # one k-means per codebook, on max_frames of the cap's frames


def test_bpe_reads_the_transcripts_of_at_most_its_cap(corpus):
    tokenizer = load_or_fit_bpe(corpus, vocab_size=300, max_hours=CAP_HOURS)
    usage = fitted_on(corpus, "bpe")
    chosen, expected = fitting_subset(read_split(corpus, "train")[0], CAP_HOURS)
    assert usage == expected and usage["utterances"] < usage["of_utterances"]
    (fitted_on_json,) = (Path(corpus.root) / "artifacts" / "bpe").glob("*/fitted_on.json")
    assert json.loads(fitted_on_json.read_text())["records"] == len(chosen)
    uncapped = load_or_fit_bpe(corpus, vocab_size=300)  # a change of the cap is a new artifact
    assert uncapped.fingerprint() != tokenizer.fingerprint()


# -- the token cache, in shards ---------------------------------------------------------------------
SHARD = 7  # records per shard here: the tiny corpus's 160 train records make 23 shards


def text_ids(tiny_corpus, cache_dir: Path) -> tuple[SpeechDataModule, list[torch.Tensor]]:
    fields = {"text_ids": TextIdsField({"text": load_or_fit_bpe(tiny_corpus, vocab_size=300)})}
    datamodule = SpeechDataModule(tiny_corpus, fields, cache_dir=str(cache_dir))
    datamodule.setup()
    return datamodule, datamodule.datasets["train"].cached["text_ids"]


def train_cache(cache_dir: Path) -> Path:
    (folder,) = (f for f in (cache_dir / "artifacts" / "token_cache").glob("train-*") if f.is_dir())
    return folder


def test_the_token_cache_is_written_and_read_in_shards(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(datamodule_module, "CACHE_SHARD_RECORDS", SHARD)
    datamodule, built = text_ids(tiny_corpus, tmp_path)
    records = datamodule.datasets["train"].records
    folder = train_cache(tmp_path)
    shards = sorted(folder.glob("tokens-*.pt"))
    assert len(shards) == math.ceil(len(records) / SHARD) == 23
    for index, shard in enumerate(shards):
        content = torch.load(shard, weights_only=True)
        assert content["ids"] == [r.id for r in records[index * SHARD : (index + 1) * SHARD]]
    calls = []
    monkeypatch.setattr(TextIdsField, "__call__", lambda self, r: calls.append(r) or 1 / 0)
    again, loaded = text_ids(tiny_corpus, tmp_path)  # read back, no record tokenized again
    assert calls == [] and len(loaded) == len(records)
    field = datamodule.fields["text_ids"]
    for record, value in zip(records, loaded):
        assert value.tolist() == field.tokenizer.encode(record.text)


@pytest.mark.parametrize("damage", ["truncated", "other records", "missing"])
def test_a_damaged_shard_is_rebuilt_with_a_warning(
    tiny_corpus, tmp_path, monkeypatch, damage, caplog
):
    monkeypatch.setattr(datamodule_module, "CACHE_SHARD_RECORDS", SHARD)
    _, built = text_ids(tiny_corpus, tmp_path)
    folder = train_cache(tmp_path)
    shard = folder / "tokens-00011.pt"
    content = torch.load(shard, weights_only=True)
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "other records":
        torch.save({"ids": content["ids"][::-1], "values": content["values"][::-1]}, shard)
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="slmlab.artifacts"):
        _, rebuilt = text_ids(tiny_corpus, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{shard} "), warnings
    assert warnings[0].endswith(f": rebuilding {folder}")
    assert [v.tolist() for v in rebuilt] == [v.tolist() for v in built]
    assert torch.load(shard, weights_only=True)["ids"] == content["ids"]

"""The one DataModule every arm trains from.

An arm names the fields it needs (`model.fields` in its config, built into `data/fields.py` objects
from the run's tokenizers). A field turns an `Utterance` into a tensor; tokenized fields are
computed once per split and cached on disk (`artifacts.py`, kind `token_cache`) under a key made of
the manifest's content and the field's tokenizer fingerprint, so a second run (or `slmlab-prepare`
before training) reads the cache. Batches are length-bucketed and padded per field:
`batch[name]` is [B, L_max, ...] and `batch[name + "_lengths"]` is [B].
"""

from __future__ import annotations

import json
import logging
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from slmlab.artifacts import (
    UnreadableFileError,
    artifact_dir,
    fingerprint,
    fit_once,
    load_tensors,
    manifest_fingerprints,
)
from slmlab.constants import SAMPLE_RATE
from slmlab.data.batching import LengthBucketBatchSampler, pad_stack
from slmlab.data.manifest import RecordPolicy, Utterance, read_split

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
CACHE_SHARD_RECORDS = 1000  # records per token cache file (tokens-00000.pt, tokens-00001.pt, ...)


def previous_turns(records: list[Utterance], count: int) -> list[list[int]]:
    """Per record, the indices of up to `count` earlier turns of its conversation (oldest first), for records
    whose manifest line has `conversation` and `turn` keys; [] for the others or when count is 0."""
    where = {(r.extra.get("conversation"), r.extra.get("turn")): i for i, r in enumerate(records)}
    turns = []
    for record in records:
        conversation, turn = record.extra.get("conversation"), record.extra.get("turn")
        if count <= 0 or conversation is None or turn is None:
            turns.append([])
        else:
            turns.append(
                [
                    where[(conversation, t)]
                    for t in range(turn - count, turn)
                    if (conversation, t) in where
                ]
            )
    return turns


class UtteranceDataset(Dataset):
    """item: id, text, words, style, speaker, each field's tensor, and `context`: the previous turns of the
    utterance's conversation (`context_turns` of them at most) as dicts of text, speaker and fields."""

    def __init__(
        self,
        records: list[Utterance],
        cached: dict[str, list[torch.Tensor]],
        fields: dict,
        context_turns: int = 0,
    ) -> None:
        self.records, self.fields, self.cached = records, fields, cached
        self.previous = previous_turns(records, context_turns)

    def __len__(self) -> int:
        return len(self.records)

    def utterance(self, i: int) -> dict:
        record = self.records[i]
        item = {
            "id": record.id,
            "text": record.text,
            "words": record.words,
            "style_label": record.style,
            "speaker": record.speaker,
        }
        for name, field in self.fields.items():
            item[name] = self.cached[name][i] if name in self.cached else field(record)
        return item

    def __getitem__(self, i: int) -> dict:
        return {**self.utterance(i), "context": [self.utterance(j) for j in self.previous[i]]}


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"tokens-{index:05d}.pt"


def _save_tokens(folder: Path, records: list[Utterance], field) -> int:
    """`field`'s values of `records` into shards of `CACHE_SHARD_RECORDS` records ({"ids", "values"} each),
    one shard in memory at a time. -> the number of shards."""
    starts = range(0, len(records), CACHE_SHARD_RECORDS)
    for index, start in enumerate(starts):
        shard = records[start : start + CACHE_SHARD_RECORDS]
        values = [field(r) for r in shard]
        torch.save({"ids": [r.id for r in shard], "values": values}, _shard_path(folder, index))
    return len(starts)


def _load_tokens(folder: Path, ids: list[str]) -> list[torch.Tensor]:
    """The cached values of the records `ids`, in order, read shard by shard; `UnreadableFileError` naming
    a shard that is missing, does not load (weights_only) or holds other records."""
    values = []
    for index, start in enumerate(range(0, len(ids), CACHE_SHARD_RECORDS)):
        path = _shard_path(folder, index)
        if not path.is_file():
            raise UnreadableFileError(path, "is missing")
        shard, expected = load_tensors(path), ids[start : start + CACHE_SHARD_RECORDS]
        if not isinstance(shard, dict) or shard.get("ids") != expected:
            raise UnreadableFileError(path, "does not hold the values of the records its key names")
        values += shard["values"]
    return values


class SpeechDataModule(L.LightningDataModule):
    """corpus: an object with `prepare()`, `manifest(split)` and `root` (see `data/` configs);
    fields: name -> field (`data/fields.py`), what the arm is served."""

    def __init__(
        self,
        corpus,
        fields: dict,
        batch_size: int = 32,
        max_tokens: int | None = None,
        num_workers: int = 0,
        sample_rate: int = SAMPLE_RATE,
        max_duration: float | None = 20.0,
        on_wrong_rate: str = "resample",
        on_duration_mismatch: str = "correct",
        bucket_batches: int = 50,
        seed: int = 0,
        cache_dir: str | None = None,
        context_turns: int = 0,
    ) -> None:
        super().__init__()
        self.corpus, self.fields = corpus, dict(fields)
        self.batch_size, self.max_tokens, self.num_workers = batch_size, max_tokens, num_workers
        self.bucket_batches, self.seed = bucket_batches, seed
        self.record_policy = RecordPolicy(
            sample_rate=sample_rate,
            max_duration=max_duration,
            on_wrong_rate=on_wrong_rate,
            on_duration_mismatch=on_duration_mismatch,
        )
        self.context_turns = context_turns
        self.cache_root = (
            Path(cache_dir) if cache_dir else Path(corpus.root)
        )  # holds artifacts/token_cache
        self.datasets: dict[str, UtteranceDataset] = {}
        self.reports: dict[str, dict] = {}
        self._prepared: dict[str, tuple[list[Utterance], dict]] = {}
        self.resume_at: dict | None = None  # {"epoch", "batches_done"} from a checkpoint

    # -- cache ------------------------------------------------------------------------------------
    def _prepare_split(self, split: str) -> tuple[list[Utterance], dict[str, list[torch.Tensor]]]:
        """Validate the split's manifest and load (or build) its token cache, once per process."""
        if split not in self._prepared:
            records = self._records(split)
            self._prepared[split] = records, self._load_or_build_cache(split, records)
        return self._prepared[split]

    def _records(self, split: str) -> list[Utterance]:
        records, report = read_split(self.corpus, split, self.record_policy)
        self.reports[split] = report.summary()
        return records

    def _load_or_build_cache(
        self, split: str, records: list[Utterance]
    ) -> dict[str, list[torch.Tensor]]:
        """Each cached field's values for `records`, built once into `<cache_dir or corpus root>/artifacts/
        token_cache/<split>-<field>-<key>/tokens-*.pt` (`artifacts.py`; `CACHE_SHARD_RECORDS` records a
        shard), keyed by the field's tokenizer fingerprint, the manifest's bytes and the ids of the records
        kept from it."""
        inputs = {
            **manifest_fingerprints(self.corpus, split),
            "records": fingerprint(" ".join(r.id for r in records).encode()),
        }
        cached, ids = {}, [r.id for r in records]
        for name, field in self.fields.items():
            if not field.cached:
                continue
            settings = {
                "field": name,
                "fingerprint": field.fingerprint(),
                "shard_records": CACHE_SHARD_RECORDS,
            }

            def build(tmp: Path, name=name, field=field) -> None:
                shards = _save_tokens(tmp, records, field)
                log.info("cached %s/%s: %d records, %d shards", split, name, len(records), shards)

            folder = artifact_dir(
                self.cache_root, "token_cache", f"{split}-{name}", settings, inputs
            )
            record = {"settings": settings, "inputs": inputs}
            load = partial(_load_tokens, ids=ids)
            cached[name] = fit_once(folder, build, load, record, rebuild_unreadable=True)
        return cached

    # -- Lightning hooks ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Rank 0: make the corpus and tokenize every split into the cache."""
        self.corpus.prepare()
        for split in SPLITS:
            self._prepare_split(split)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.datasets:
                self.datasets[split] = UtteranceDataset(
                    *self._prepare_split(split),
                    fields=self.fields,
                    context_turns=self.context_turns,
                )
        for split, summary in self.reports.items():
            if summary["problems"]:
                log.warning("data %s: %s", split, json.dumps(summary))

    def _lengths(self, split: str) -> list[int]:
        """Bucketing lengths: audio duration in 10 ms frames when audio is served (it dominates the
        padding), else the length of the first cached field."""
        dataset = self.datasets[split]
        first_cached = next(iter(dataset.cached), None)
        if first_cached is not None and all(field.cached for field in self.fields.values()):
            return [len(v) for v in dataset.cached[first_cached]]
        return [int(r.duration * 100) for r in dataset.records]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        sampler = LengthBucketBatchSampler(
            self._lengths(split),
            self.batch_size,
            self.max_tokens,
            shuffle,
            self.bucket_batches,
            self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        return DataLoader(
            self.datasets[split],
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # its own generator: every new iterator draws its workers' seed from it, not from torch's
            # global generator, which a training step samples from (dropout, csm's frames) and a
            # resumed run restores: an epoch's start or a validation would move it otherwise
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        if self.resume_at:  # fitting from a checkpoint: the rest of its epoch
            loader.batch_sampler.resume(**self.resume_at)
            self.resume_at = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -- resume (Lightning keeps this state in every checkpoint) ---------------------------------------
    def state_dict(self) -> dict:
        """Where fitting stands: the epoch and how many of its batches each rank has trained on, as
        Lightning's fit loop counts them (the sampler's iterator is a batch ahead: Lightning prefetches)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        """Restored by Lightning from a checkpoint, before `train_dataloader`, which resumes there."""
        self.resume_at = dict(state) or None
        # Lightning's warning on a mid-epoch checkpoint does not apply: the sampler skips what was done
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before")

    def collate(self, items: list[dict]) -> dict:
        batch = {
            key: [it[key] for it in items]
            for key in ("id", "text", "words", "style_label", "speaker", "context")
        }
        for name, field in self.fields.items():
            batch[name], batch[f"{name}_lengths"] = pad_stack(
                [it[name] for it in items], field.pad_value
            )
        return batch

    def summary(self) -> dict:
        """Per split: records read, kept, skipped (by reason), resampled or corrected; for metrics.json."""
        return dict(self.reports)

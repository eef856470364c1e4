"""The shared DataModule: fields, on-disk cache keyed by the tokenizer, length buckets, DDP split."""

from collections import Counter

import pytest
import torch

from slmlab.data.batching import LengthBucketBatchSampler
from slmlab.data.datamodule import SpeechDataModule
from slmlab.data.fields import TextIdsField, WaveformField
from slmlab.tokenizers.text import load_or_fit_bpe

FIELDS = {"text_ids": TextIdsField, "audio": WaveformField}


def make(corpus, fields=("text_ids",), vocab_size=512):
    tokenizers = {"text": load_or_fit_bpe(corpus, vocab_size)}
    return SpeechDataModule(corpus, {n: FIELDS[n](tokenizers) for n in fields}, batch_size=8)


def test_batches_hold_the_fields_the_arm_names(tiny_corpus):
    """Each row of a batch holds its own record's token ids and waveform, padded after its length."""
    dm = make(tiny_corpus, fields=("text_ids", "audio"))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    records = {r.id: r for r in dm.datasets["train"].records}
    assert len(batch["id"]) > 1 and set(batch) >= {"text_ids_lengths", "audio_lengths"}
    for i, record in enumerate(records[id_] for id_ in batch["id"]):
        assert batch["text"][i] == record.text
        for name, field in dm.fields.items():
            values, n = batch[name][i], int(batch[f"{name}_lengths"][i])
            torch.testing.assert_close(values[:n], field(record), atol=1e-6, rtol=0)
            assert (values[n:] == field.pad_value).all()


def test_second_run_reads_the_cache(tiny_corpus, monkeypatch):
    dm = make(tiny_corpus)
    dm.prepare_data()
    cache_files = sorted((tiny_corpus.root / "artifacts" / "token_cache").glob("*/tokens-*.pt"))
    assert len(cache_files) >= 3
    calls = Counter()
    original = TextIdsField.__call__

    def counting(self, record):
        calls["encode"] += 1
        return original(self, record)

    monkeypatch.setattr(TextIdsField, "__call__", counting)
    again = make(tiny_corpus)
    again.setup("fit")
    assert calls["encode"] == 0
    first = again.datasets["train"]
    assert torch.equal(first[0]["text_ids"], original(again.fields["text_ids"], first.records[0]))
    other = make(tiny_corpus, vocab_size=400)  # another tokenizer config -> another cache key
    other.setup("fit")
    assert calls["encode"] == sum(len(other.datasets[s]) for s in ("train", "val", "test"))


def test_length_buckets_cover_every_item_once_and_stay_tight():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=16, shuffle=True, bucket_batches=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.15  # random batches would pad ~2x
    sampler.set_epoch(1)
    assert list(sampler) != batches  # re-shuffled every epoch


def test_max_tokens_caps_the_padded_batch():
    lengths = [10] * 50 + [100] * 50
    batches = list(LengthBucketBatchSampler(lengths, batch_size=64, max_tokens=400))
    assert sorted(i for b in batches for i in b) == list(range(100))  # every item, once
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400
    assert max(len(b) for b in batches) == 40  # filled to the cap: 40 items of 10 tokens


@pytest.mark.parametrize("n", [100, 101, 103])
def test_ddp_ranks_get_disjoint_equal_shares(n):
    """Two ranks split the batches: no item on both, every item on one; when the batch count is odd,
    rank 1 ends with a repeat of rank 0's first batch so both ranks step equally often."""
    lengths = list(range(1, n + 1))
    ranks = [
        list(LengthBucketBatchSampler(lengths, batch_size=4, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1])
    n_batches = len(list(LengthBucketBatchSampler(lengths, batch_size=4)))  # 25, 26, 26
    if n_batches % 2:
        assert ranks[1][-1] == ranks[0][0]
        ranks[1] = ranks[1][:-1]
    shards = [[i for b in rank for i in b] for rank in ranks]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(n))

"""slmlab-bench: the cost of each arm measured alone, and benchmarks whose two sides do the same work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from slmlab.bench import csm as csm_bench
from slmlab.bench import speechlm as speechlm_bench
from slmlab.bench import spiritlm as spiritlm_bench
from slmlab.bench.cost import MemoryGrowth, train_cost
from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import load_audio, read_manifest
from slmlab.runs import compose

MiB = 2**20


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak-RSS reset")
def test_memory_growth_counts_only_what_is_allocated_after_start():
    memory = MemoryGrowth(cuda=False)
    memory.start()
    idle = memory.peak()
    memory.start()
    block = torch.ones(256 * MiB // 4)  # 256 MiB, written to, so resident
    grown = memory.peak()
    del block
    assert idle < 16 * MiB  # the test process itself holds hundreds of MiB
    assert 240 * MiB < grown < 300 * MiB


def test_train_cost_measures_each_arm_alone(data_dir, tiny_corpus):
    overrides = [f"paths.data_dir={data_dir}", "data.preset=tiny", "datamodule.batch_size=8"]
    rows = train_cost(steps=2, arms=("text_lm", "speechlm"), overrides=overrides, warmup=1)
    assert [row["setting"] for row in rows] == ["text_lm", "speechlm"]
    for row in rows:
        assert row["benchmark"] == "train_cost" and row["baseline"] is None
        assert row["steps"] == 2 and row["device"] == "cpu"
        # audio seconds and own tokens are counted on the same timed steps
        assert row["ours"] / row["tokens_per_second"] == pytest.approx(
            row["audio_seconds_per_step"] / row["tokens_per_step"]
        )
        # seconds, not samples: a batch of the tiny corpus's utterances (under 5 s each)
        assert 0 < row["audio_seconds_per_step"] <= 5.0 * row["batch_size"]
        assert row["model_flops_per_step"] == 6 * row["dense_parameters"] * row["tokens_per_step"]
        # the growth during training, not the process's peak (imports, corpus, model)
        assert 0 < row["memory_bytes"] < row["process_peak_rss_bytes"] - row["weight_bytes"]
    text_lm, speechlm = rows
    # a dense decoder on its own tokens: forward and backward counted come to about 6N per token
    assert text_lm["counted_flops_per_token"] == pytest.approx(
        6 * text_lm["dense_parameters"], rel=0.25
    )
    # SpeechLM's encoder runs on mel frames, more of them than the LM's positions: 6N undercounts
    assert speechlm["counted_flops_per_token"] > 6 * speechlm["dense_parameters"]


@pytest.fixture(scope="module")
def spiritlm_task(data_dir, tiny_corpus):
    """experiment=tiny_spiritlm_expressive without a vocoder (the tokenizer other tests fit)."""
    overrides = [
        f"paths.data_dir={data_dir}",
        "experiment=tiny_spiritlm_expressive",
        "tokenizer.speech.decoder=null",
    ]
    return spiritlm_bench.demo_task(overrides)


def test_spiritlm_train_step_sides_train_on_the_same_sequences(spiritlm_task, monkeypatch):
    datamodule, task = spiritlm_task
    batch = next(iter(datamodule.train_dataloader()))
    candidates, prebuilt = spiritlm_bench.train_step_candidates(task, batch)
    seen = []
    token_losses = task.token_losses
    monkeypatch.setattr(task, "token_losses", lambda s: seen.append(s) or token_losses(s))
    for name in ("ours", "prebuilt", "ours", "prebuilt"):
        candidates[name]()
    assert seen == [prebuilt] * 4


def test_spiritlm_tokenize_compares_units_with_units_at_one_rate(spiritlm_task):
    datamodule, task = spiritlm_task
    records, _ = read_manifest(datamodule.corpus.manifest("val"), check_audio=False)
    waves = [load_audio(r.audio_filepath, SAMPLE_RATE) for r in records[:3]]
    reference = spiritlm_bench.hubert_units(layers=1, units=50)
    candidates = spiritlm_bench.tokenization_candidates(task, waves, reference)
    ours, theirs = candidates["units"](), candidates["reference"]()
    for wav, our_units, their_units in zip(waves, ours, theirs, strict=True):
        assert our_units.dtype == their_units.dtype == torch.long
        assert abs(len(our_units) - len(wav) / 640) <= 1  # 25 Hz
        assert abs(len(our_units) - len(their_units)) <= 1


def _tiny_sizes(model: str) -> tuple[dict, dict]:
    net = compose("train", [f"model={model}", f"model/{model}/size=tiny"]).model.task.net
    return OmegaConf.to_container(net.backbone), OmegaConf.to_container(net.decoder)


def test_csm_train_step_sides_train_the_decoder_on_the_same_frames(monkeypatch):
    ours, theirs = csm_bench._models(*_tiny_sizes("csm"))
    candidates = csm_bench.train_step_candidates(ours, theirs)
    our_frames, their_labels = [], []
    decoder_logits, forward = ours.decoder_logits, theirs.forward
    monkeypatch.setattr(
        ours, "decoder_logits", lambda h, c: our_frames.append(c) or decoder_logits(h, c)
    )
    monkeypatch.setattr(
        theirs, "forward", lambda **kw: their_labels.append(kw["labels"]) or forward(**kw)
    )
    for name in ("ours", "theirs", "ours"):
        candidates[name]()
    labels = their_labels[0]
    decoder_frames = labels[labels[..., 1] != -100]  # [N, K] codes the depth decoder is trained on
    assert len(decoder_frames) == round(
        csm_bench.FRACTION * csm_bench.BATCH * (csm_bench.AUDIO_FRAMES + 1)
    )
    for codes in our_frames:
        assert sorted(codes.tolist()) == sorted(decoder_frames.tolist())


def test_speechlm_train_step_sides_get_the_same_batch():
    batch = speechlm_bench._batch()
    _, ours, _, theirs = speechlm_bench.models_and_inputs(batch, *speechlm_bench._demo_sizes())
    frames = ours["features"].shape[-1]
    assert torch.equal(theirs["input_features"][..., :frames], ours["features"])
    assert not theirs["input_features"][..., frames:].any()
    assert torch.equal(theirs["feature_attention_mask"].sum(1), ours["feature_lengths"])
    for inputs in (ours, theirs):
        targets = [row[row != -100] for row in inputs["labels"]]
        assert torch.equal(torch.stack(targets), batch["targets"])
    audio = {
        side: (inputs["input_ids"] == speechlm_bench.AUDIO_ID).sum(1)
        for side, inputs in (("ours", ours), ("theirs", theirs))
    }
    assert (audio["ours"] - audio["theirs"]).abs().max() <= 1

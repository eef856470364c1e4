"""Spirit LM at the demo configuration (`experiment=demo_spiritlm_expressive`), on the tiny embedded corpus.

- tokenization: our speech tokens (MFCC units + pitch + style) against the reference's unit extractor
  cost, a HuBERT-base network (transformers, random weights: speed does not depend on them) up to
  layer 11 plus the nearest of 500 centroids; audio seconds tokenised per second.
- training step: our whole step (draw the sequence kinds and spans, build the interleaved sequences
  from frame-level streams, forward, backward, AdamW) against the same LM step on sequences built
  beforehand, so the ratio is the cost of building sequences on the fly; LM tokens per second.
"""

from __future__ import annotations

import time

import torch
from transformers import HubertConfig, HubertModel

from slmlab.bench import median_seconds
from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import load_audio, read_manifest
from slmlab.runs import build, compose

UTTERANCES = 8


def _demo_task():
    """The demo's datamodule and task, built on the tiny corpus (synthesised on first use) without a vocoder."""
    cfg = compose(
        "train",
        [
            "experiment=demo_spiritlm_expressive",
            "data.preset=tiny",
            "tokenizer.speech.decoder=null",
        ],
    )
    datamodule, task = build(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule, task


def tokenization_vs_hubert(steps: int = 10) -> list[dict]:
    datamodule, task = _demo_task()
    records, _ = read_manifest(datamodule.corpus.manifest("val"), check_audio=False)
    waves = [load_audio(r.audio_filepath, SAMPLE_RATE) for r in records[:UTTERANCES]]
    seconds_of_audio = sum(len(w) for w in waves) / SAMPLE_RATE
    hubert = HubertModel(
        HubertConfig(num_hidden_layers=11)
    ).eval()  # HuBERT-base sizes up to layer 11 (mHuBERT-25Hz)
    centroids = torch.randn(500, hubert.config.hidden_size)

    def ours():
        for wav in waves:
            task.speech_tokenizer.encode_streams(wav, task.streams)

    @torch.no_grad()
    def reference():
        for wav in waves:
            hidden = hubert(((wav - wav.mean()) / wav.std())[None]).last_hidden_state[0]
            torch.cdist(hidden, centroids).argmin(1)

    seconds = median_seconds({"ours": ours, "reference": reference}, steps, warmup=1)
    return [
        {
            "benchmark": "spiritlm_tokenize",
            "setting": f"units+pitch+style, {UTTERANCES} utterances",
            "unit": "audio s/s",
            "ours": seconds_of_audio / seconds["ours"],
            "baseline": seconds_of_audio / seconds["reference"],
            "ratio": seconds["reference"] / seconds["ours"],
            "baseline_name": "HuBERT-base to layer 11 + 500-centroid assignment (the reference's unit extractor)",
            "audio_seconds": round(seconds_of_audio, 2),
        }
    ]


def train_step_vs_prebuilt(steps: int = 10) -> list[dict]:
    datamodule, task = _demo_task()
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)

    def sequences():
        return [
            task.sequences.build(
                batch["text"][i], batch["words"][i], task.item_streams(batch, i), task.rng
            )[0]
            for i in range(len(batch["id"]))
        ]

    prebuilt = sequences()

    def lm_step(built):
        optimizer.zero_grad(set_to_none=True)
        losses, targets = task.token_losses(built)
        losses[targets != -100].mean().backward()
        optimizer.step()

    start = time.perf_counter()
    tokens = sum(len(s) for _ in range(20) for s in sequences()) / 20
    build_ms = (time.perf_counter() - start) / 20 * 1000
    seconds = median_seconds(
        {"ours": lambda: lm_step(sequences()), "prebuilt": lambda: lm_step(prebuilt)}, steps
    )
    return [
        {
            "benchmark": "spiritlm_train_step",
            "setting": f"batch {len(batch['id'])}, built each step",
            "unit": "tokens/s",
            "ours": tokens / seconds["ours"],
            "baseline": tokens / seconds["prebuilt"],
            "ratio": seconds["prebuilt"] / seconds["ours"],
            "baseline_name": "the same LM step on prebuilt sequences",
            "tokens_per_step": tokens,
            "sequence_build_ms": round(build_ms, 2),
            "parameters": sum(p.numel() for p in task.parameters()),
        }
    ]

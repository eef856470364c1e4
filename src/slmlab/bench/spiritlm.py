"""Spirit LM at the demo configuration (`experiment=demo_spiritlm_expressive`), on the tiny embedded corpus.

- tokenization, units against units: our speech units (MFCC + nearest of 500 centroids) against the
  reference's unit extractor, a HuBERT-base network (transformers, random weights: speed does not depend on
  them) up to layer 11 plus the nearest of 500 centroids, both at 25 Hz (HuBERT's convolutions get one more
  stride-2 layer, a 640-sample hop, the rate of the mHuBERT-25Hz Spirit LM uses) on the same utterances;
  audio seconds tokenised per second. Our pitch and style tokens have no baseline here: their cost is a
  plain timing of all our streams (units + pitch + style).
- training step: our whole step (draw the sequence kinds and spans, build the interleaved sequences from
  frame-level streams, forward, backward, AdamW) against the same LM step on the same sequences built
  beforehand, so the ratio is the cost of building sequences on the fly; LM tokens per second, counted on
  those sequences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import HubertConfig, HubertModel

from slmlab.bench import median_seconds
from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import load_audio, read_split
from slmlab.runs import build, compose

UTTERANCES = 8
DEMO = ["experiment=demo_spiritlm_expressive", "data.preset=tiny", "tokenizer.speech.decoder=null"]


def demo_task(overrides: list[str] = DEMO):
    """The datamodule and task of `overrides` (the demo's, on the tiny corpus, without a vocoder), set up."""
    datamodule, task = build(compose("train", overrides))
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule, task


def hubert_units(layers: int = 11, units: int = 500) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference's unit extractor at HuBERT-base sizes: wav [S] at 16 kHz -> unit ids [~S/640]."""
    base = HubertConfig()
    hubert = HubertModel(
        HubertConfig(
            num_hidden_layers=layers,
            conv_dim=(*base.conv_dim, base.conv_dim[-1]),
            conv_stride=(*base.conv_stride, 2),
            conv_kernel=(*base.conv_kernel, 2),
        )
    ).eval()
    centroids = torch.randn(units, hubert.config.hidden_size)

    @torch.no_grad()
    def extract(wav: torch.Tensor) -> torch.Tensor:
        hidden = hubert(((wav - wav.mean()) / wav.std())[None]).last_hidden_state[0]
        return torch.cdist(hidden, centroids).argmin(1)

    return extract


def tokenization_candidates(task, waves: list[torch.Tensor], reference) -> dict[str, Callable]:
    """Each candidate tokenises all `waves` -> a list of per-utterance outputs."""
    tokenizer = task.speech_tokenizer
    return {
        "units": lambda: [tokenizer.encode_streams(w, ("units",))["units"] for w in waves],
        "reference": lambda: [reference(w) for w in waves],
        "all streams": lambda: [tokenizer.encode_streams(w, task.streams) for w in waves],
    }


def tokenization_vs_hubert(steps: int = 10) -> list[dict]:
    datamodule, task = demo_task()
    records, _ = read_split(datamodule.corpus, "val")
    waves = [load_audio(r.audio_filepath, SAMPLE_RATE) for r in records[:UTTERANCES]]
    audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    seconds = median_seconds(tokenization_candidates(task, waves, hubert_units()), steps, warmup=1)
    return [
        {
            "benchmark": "spiritlm_tokenize",
            "setting": f"units, {UTTERANCES} utterances",
            "unit": "audio s/s",
            "ours": audio_seconds / seconds["units"],
            "baseline": audio_seconds / seconds["reference"],
            "ratio": seconds["reference"] / seconds["units"],
            "baseline_name": "HuBERT-base to layer 11 at 25 Hz + 500-centroid assignment (reference units)",
            "audio_seconds": round(audio_seconds, 2),
        },
        {
            "benchmark": "spiritlm_tokenize",
            "setting": f"all streams, plain timing, {UTTERANCES} utterances",
            "unit": "audio s/s",
            "ours": audio_seconds / seconds["all streams"],
            "baseline": None,
            "ratio": None,
            "audio_seconds": round(audio_seconds, 2),
        },
    ]


def train_step_candidates(task, batch: dict) -> tuple[dict[str, Callable], list[list[int]]]:
    """-> ({"ours": build the batch's sequences + LM step, "prebuilt": LM step}, the sequences both train on).

    Ours rewinds the task's random draws (kinds, spans) before each build, so that it builds the same
    sequences every step, the ones "prebuilt" trains on."""
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
    draws = task.rng.getstate()

    def sequences() -> list[list[int]]:
        task.rng.setstate(draws)
        return [
            task.sequences.build(
                batch["text"][i], batch["words"][i], task.item_streams(batch, i), task.rng
            )[0]
            for i in range(len(batch["id"]))
        ]

    def lm_step(built: list[list[int]]) -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, targets = task.token_losses(built)
        losses[targets != -100].mean().backward()
        optimizer.step()

    prebuilt = sequences()
    return {"ours": lambda: lm_step(sequences()), "prebuilt": lambda: lm_step(prebuilt)}, prebuilt


def train_step_vs_prebuilt(steps: int = 10) -> list[dict]:
    datamodule, task = demo_task()
    batch = next(iter(datamodule.train_dataloader()))
    candidates, prebuilt = train_step_candidates(task, batch)
    tokens = sum(len(s) for s in prebuilt)  # the sequences every timed step of both trains on
    seconds = median_seconds(candidates, steps)
    return [
        {
            "benchmark": "spiritlm_train_step",
            "setting": f"batch {len(batch['id'])}, built each step",
            "unit": "tokens/s",
            "ours": tokens / seconds["ours"],
            "baseline": tokens / seconds["prebuilt"],
            "ratio": seconds["prebuilt"] / seconds["ours"],
            "baseline_name": "the same LM step on the same sequences, built beforehand",
            "tokens_per_step": tokens,
            "sequence_build_ms": round(1000 * (seconds["ours"] - seconds["prebuilt"]), 2),
            "parameters": sum(p.numel() for p in task.parameters()),
        }
    ]

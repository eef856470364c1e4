"""SpeechLM training step against transformers' `Qwen2AudioForConditionalGeneration` at matched sizes.

Both get the same batch of log-mel features (16 utterances of 1.5-3.5 s, the embedded corpus's range),
the whisper_tiny encoder's and the demo's Qwen2 decoder's sizes (read from `conf/`), audio at 25 tokens per second
(Qwen2-Audio: stride-2 convolution + average pooling by 2; ours: stride-2 convolution + stacking by 2)
and the same transcript targets. A step is forward, backward and an AdamW update, on inputs built before
the timed steps. Ours stacks encoder frames by 2 rounding up (an odd last frame is padded), Qwen2-Audio pools rounding
down: ours gives some utterances one audio embedding more, under 1% of the LM positions (both counted).
Qwen2-Audio as shipped pads every clip to 30 s: that is other work, and is not compared here.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

from slmlab.bench import median_seconds
from slmlab.models.speechlm import build_speechlm, frame_mask
from slmlab.runs import compose

VOCAB, AUDIO_ID, PAD_ID, BATCH, TARGET_TOKENS = 1030, 1029, 0, 16, 12


def _batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    seconds = 1.5 + 2.0 * torch.rand(BATCH, generator=generator)
    mel_frames = (seconds * 100).long()
    width = int(mel_frames.max())
    features = (
        torch.randn(BATCH, 80, width, generator=generator) * frame_mask(mel_frames, width)[:, None]
    )
    targets = torch.randint(3, AUDIO_ID, (BATCH, TARGET_TOKENS), generator=generator)
    return {"mel_frames": mel_frames, "features": features, "targets": targets}


def _rows(audio_tokens: torch.Tensor, targets: torch.Tensor) -> dict:
    """Right-padded rows [bos, audio x n_i, target]; labels on targets only."""
    width = int(audio_tokens.max()) + 1 + targets.shape[1]
    ids, labels = torch.full((BATCH, width), PAD_ID), torch.full((BATCH, width), -100)
    mask = torch.zeros(BATCH, width, dtype=torch.long)
    for i, n in enumerate(audio_tokens.tolist()):
        row = torch.cat([torch.tensor([1] + [AUDIO_ID] * n), targets[i]])
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
        labels[i, n + 1 : len(row)] = targets[i]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _demo_sizes() -> tuple[dict, dict]:
    """The encoder and decoder presets of `model=speechlm` with a Whisper encoder (whisper_tiny, qwen2_tiny),
    the encoder Qwen2-Audio has."""
    net = compose("train", ["model=speechlm", "model/speechlm/encoder=whisper_tiny"]).model.task.net
    encoder, decoder = (
        OmegaConf.to_container(net[part], resolve=True) for part in ("encoder", "decoder")
    )
    return (
        {k: v for k, v in encoder.items() if k != "pretrained_path"},
        {k: v for k, v in decoder.items() if k != "pretrained_path"},
    )


def _ours(batch: dict, encoder: dict, decoder: dict):
    model = build_speechlm(
        VOCAB, AUDIO_ID, encoder, decoder, stack_factor=2, projector="mlp", pad_token_id=PAD_ID
    )
    inputs = {
        **_rows(model.audio_output_lengths(batch["mel_frames"]), batch["targets"]),
        "features": batch["features"],
        "feature_lengths": batch["mel_frames"],
    }
    return model, inputs


def _qwen2_audio(batch: dict, encoder: dict, decoder: dict, pad_to_frames: int):
    """Qwen2-Audio's encoder needs exactly 2 x max_source_positions mel frames: the batch is padded to them."""
    audio = {k: v for k, v in encoder.items() if k != "model_type"} | {
        "max_source_positions": pad_to_frames // 2
    }
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", **audio},
        text_config={**decoder, "vocab_size": VOCAB, "pad_token_id": PAD_ID},
        audio_token_index=AUDIO_ID,
    )
    model = Qwen2AudioForConditionalGeneration(config)
    features = torch.nn.functional.pad(
        batch["features"], (0, pad_to_frames - batch["features"].shape[-1])
    )
    feature_mask = frame_mask(batch["mel_frames"], pad_to_frames).long()
    audio_tokens = model.audio_tower._get_feat_extract_output_lengths(batch["mel_frames"])[1]
    inputs = {
        **_rows(audio_tokens, batch["targets"]),
        "input_features": features,
        "feature_attention_mask": feature_mask,
    }
    return model, inputs


def _step(model, inputs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()

    return step


def models_and_inputs(batch: dict, encoder: dict, decoder: dict) -> tuple:
    """-> (ours, our inputs, Qwen2-Audio, its inputs) on `batch`, padded alike (Qwen2-Audio: to an even
    number of mel frames, its encoder's input positions)."""
    ours, our_inputs = _ours(batch, encoder, decoder)
    frames = batch["features"].shape[-1]
    theirs, their_inputs = _qwen2_audio(batch, encoder, decoder, frames + frames % 2)
    return ours, our_inputs, theirs, their_inputs


def train_step_vs_qwen2_audio(steps: int = 10) -> list[dict]:
    torch.manual_seed(0)
    ours, our_inputs, theirs, their_inputs = models_and_inputs(_batch(), *_demo_sizes())
    seconds = median_seconds(
        {"ours": _step(ours, our_inputs), "theirs": _step(theirs, their_inputs)}, steps
    )
    return [
        {
            "benchmark": "speechlm_train_step",
            "setting": "same padded batch",
            "unit": "ms/step",
            "ours": 1000 * seconds["ours"],
            "baseline": 1000 * seconds["theirs"],
            "ratio": seconds["theirs"] / seconds["ours"],
            "baseline_name": "transformers Qwen2AudioForConditionalGeneration",
            "parameters_ours": sum(p.numel() for p in ours.parameters()),
            "parameters_baseline": sum(p.numel() for p in theirs.parameters()),
            "lm_positions_ours": int(our_inputs["attention_mask"].sum()),
            "lm_positions_baseline": int(their_inputs["attention_mask"].sum()),
            "batch": f"{BATCH} utterances, 1.5-3.5 s, {TARGET_TOKENS} target tokens",
        }
    ]

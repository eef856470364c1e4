"""CSM at the demo sizes (`model=csm`, read from `conf/`: 16 codebooks of 256, text vocabulary 1024) against
transformers' `CsmForConditionalGeneration` built with the same backbone and depth-decoder sizes.

- training step (forward, backward, AdamW) on the same 16 sequences of 5 text + 28 audio frames + the end
  frame (2.2 s, the corpus's mean), decoder loss on the same 1/16 of the audio frames in both (transformers:
  the other frames' labels for codebooks 1..K-1 set to -100, as its processor's `-101` marks them), every
  input and label built before the timed steps.
  transformers' 3-D `input_ids` path embeds every frame as codes, so its text frames are codes here;
  the embedding lookups differ, the transformer work is the same.
- generation of 100 frames (8 s of audio) after a 12-token text prompt, top-k 50 sampling: ours with KV
  caches, transformers' `generate` (its caches), and ours without caches; frames per second and the
  real-time factor (compute seconds per second of audio, < 1 is faster than real time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import OmegaConf
from transformers import CsmConfig, CsmForConditionalGeneration

from slmlab.bench import median_seconds
from slmlab.models.csm import CSM
from slmlab.runs import compose

K, CARD, TEXT, BATCH, TEXT_FRAMES, AUDIO_FRAMES, FRACTION, NEW_FRAMES = (
    8,
    256,
    1024,
    16,
    5,
    28,
    1 / 16,
    100,
)


def _demo_sizes() -> tuple[dict, dict]:
    net = compose("train", ["model=csm"]).model.task.net
    return OmegaConf.to_container(net.backbone), OmegaConf.to_container(net.decoder)


def _models(backbone: dict, decoder: dict) -> tuple[CSM, CsmForConditionalGeneration]:
    torch.manual_seed(0)
    ours = CSM(TEXT, CARD, K, backbone, decoder)
    config = CsmConfig(
        num_codebooks=K,
        vocab_size=CARD,
        text_vocab_size=TEXT,
        hidden_size=backbone["embed_dim"],
        intermediate_size=backbone["intermediate_dim"],
        num_hidden_layers=backbone["num_layers"],
        num_attention_heads=backbone["num_heads"],
        num_key_value_heads=backbone["num_kv_heads"],
        max_position_embeddings=backbone["max_seq_len"],
        pad_token_id=0,
        bos_token_id=1,
        audio_token_id=TEXT - 2,
        audio_eos_token_id=TEXT - 1,
        codebook_pad_token_id=CARD - 1,
        codebook_eos_token_id=0,
        depth_decoder_config={
            "num_codebooks": K,
            "backbone_hidden_size": backbone["embed_dim"],
            "vocab_size": CARD,
            "hidden_size": decoder["embed_dim"],
            "intermediate_size": decoder["intermediate_dim"],
            "num_hidden_layers": decoder["num_layers"],
            "num_attention_heads": decoder["num_heads"],
            "num_key_value_heads": decoder["num_kv_heads"],
            "max_position_embeddings": K + 1,
        },
    )
    return ours, CsmForConditionalGeneration(config)


def _parameters(model) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("codec_model")
    )


def train_step_candidates(ours: CSM, theirs: CsmForConditionalGeneration) -> dict[str, Callable]:
    """{"ours", "theirs"}: a training step of each on the same fixed batch, the decoder trained on the same
    frames: ours draws them (1/16 of the audio frames) from a generator rewound before each step, and
    transformers' labels keep codebooks 1..K-1 on exactly those frames (-100 elsewhere), built beforehand."""
    generator = torch.Generator().manual_seed(0)
    frames = TEXT_FRAMES + AUDIO_FRAMES + 1
    tokens = torch.randint(1, CARD, (BATCH, frames, K + 1), generator=generator)
    tokens[:, -1] = 0  # the end frame
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :TEXT_FRAMES, -1], mask[:, TEXT_FRAMES:, :-1] = True, True
    tokens, lengths = tokens * mask, torch.full((BATCH,), frames)
    codes = torch.where(
        mask[..., :-1], tokens[..., :-1], tokens[..., -1:]
    )  # text frames as codes for transformers
    draws = generator.get_state()
    rows, cols, _ = CSM.audio_targets(tokens, mask, lengths)  # frame cols + 1 of row is a target
    pick = torch.randperm(len(rows), generator=generator)[: round(FRACTION * len(rows))]
    labels = codes.clone()
    labels[:, :TEXT_FRAMES] = -100
    keep = torch.zeros(BATCH, frames, dtype=torch.bool)
    keep[rows[pick], cols[pick] + 1] = True
    labels[..., 1:][~keep] = -100

    def ours_loss():
        generator.set_state(draws)
        return ours(tokens, mask, lengths, FRACTION, generator).loss

    def step(model, loss):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()

        return run

    return {
        "ours": step(ours, ours_loss),
        "theirs": step(theirs, lambda: theirs(input_ids=codes, labels=labels).loss),
    }


def train_step_vs_transformers(steps: int = 10) -> list[dict]:
    ours, theirs = _models(*_demo_sizes())
    seconds = median_seconds(train_step_candidates(ours, theirs), steps)
    frames = TEXT_FRAMES + AUDIO_FRAMES + 1
    return [
        {
            "benchmark": "csm_train_step",
            "setting": f"batch {BATCH} x {frames} frames, decoder on 1/16",
            "unit": "ms/step",
            "ours": 1000 * seconds["ours"],
            "baseline": 1000 * seconds["theirs"],
            "ratio": seconds["theirs"] / seconds["ours"],
            "baseline_name": "transformers CsmForConditionalGeneration (same sizes)",
            "parameters_ours": _parameters(ours),
            "parameters_baseline": _parameters(theirs),
        }
    ]


def generation_vs_transformers(steps: int = 3) -> list[dict]:
    ours, theirs = _models(*_demo_sizes())
    ours.eval(), theirs.eval()
    text = torch.randint(2, TEXT - 2, (1, 12), generator=torch.Generator().manual_seed(1))
    tokens = torch.zeros(1, text.shape[1], K + 1, dtype=torch.long)
    tokens[..., -1] = text
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[..., -1] = True
    sampling = {"temperature": 0.9, "topk": 50}

    @torch.no_grad()
    def transformers_generate():
        out = theirs.generate(
            input_ids=text,
            max_new_tokens=NEW_FRAMES,
            min_new_tokens=NEW_FRAMES,
            do_sample=True,
            top_k=50,
            temperature=0.9,
            depth_decoder_do_sample=True,
            depth_decoder_top_k=50,
            depth_decoder_temperature=0.9,
        )
        assert out.shape[1] == NEW_FRAMES, out.shape

    def ours_generate(use_cache: bool):
        def run():
            out = ours.generate(tokens, mask, NEW_FRAMES, use_cache=use_cache, **sampling)
            assert out.shape[1] == NEW_FRAMES, (
                out.shape
            )  # random weights never sample the all-zero frame

        return run

    seconds = median_seconds(
        {
            "ours": ours_generate(True),
            "transformers": transformers_generate,
            "uncached": ours_generate(False),
        },
        steps,
        warmup=1,
    )
    audio_seconds = NEW_FRAMES / 12.5
    rows = []
    for baseline in ("transformers", "uncached"):
        rows.append(
            {
                "benchmark": "csm_generate",
                "setting": f"{NEW_FRAMES} frames vs {baseline}",
                "unit": "frames/s",
                "ours": NEW_FRAMES / seconds["ours"],
                "baseline": NEW_FRAMES / seconds[baseline],
                "ratio": seconds[baseline] / seconds["ours"],
                "baseline_name": {
                    "transformers": "transformers CsmForConditionalGeneration.generate",
                    "uncached": "our generation without KV caches",
                }[baseline],
                "real_time_factor_ours": seconds["ours"] / audio_seconds,
                "real_time_factor_baseline": seconds[baseline] / audio_seconds,
            }
        )
    return rows

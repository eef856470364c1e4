"""CSM: the amortised loss, cached generation, the published architecture, training and the CLI."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_on_tiny_corpus
from hydra.utils import instantiate

from slmlab.artifacts import load_tensors
from slmlab.convert.csm import import_checkpoint
from slmlab.models.csm import CSM
from slmlab.runs import build

K, CARD, TEXT = 4, 32, 100
BACKBONE = dict(
    num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=64, intermediate_dim=128, max_seq_len=256
)
DECODER = dict(
    num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64, max_seq_len=K
)


def make_model(seed: int = 0) -> CSM:
    torch.manual_seed(seed)
    return CSM(TEXT, CARD, K, BACKBONE, DECODER).eval()


def make_frames(lengths=(20, 15), text_frames: int = 5):
    """Two sequences: text frames (column K), then audio frames (columns 0..K-1); zeros where masked."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, CARD, (len(lengths), max(lengths), K + 1), generator=generator)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :text_frames, -1] = True
    mask[:, text_frames:, :-1] = True
    return tokens * mask, mask, torch.tensor(lengths)


def decoder_losses_per_frame(model: CSM, tokens, mask, lengths, h) -> torch.Tensor:
    """The reference: each target frame alone, the decoder run on [h, c0, ..., c_{K-2}] as in
    generation -> [frames, K-1] cross-entropies, in the order of `CSM.audio_targets`."""
    losses = []
    for b, n in enumerate(lengths.tolist()):
        for t in range(5, n):  # audio frames 5..n-1 are predicted from positions 4..n-2
            codes = tokens[b, t, :K]
            inputs = torch.stack(
                [h[b, t - 1], *(model.embed_audio(k, codes[k]) for k in range(K - 1))]
            )[None]
            out = model.decoder(model.projection(inputs))[0]
            losses.append(
                torch.stack(
                    [
                        F.cross_entropy(out[k] @ model.audio_head[k - 1], codes[k])
                        for k in range(1, K)
                    ]
                )
            )
    return torch.stack(losses)


def test_the_amortised_loss_equals_the_full_loss_at_fraction_one():
    model, (tokens, mask, lengths) = make_model(), make_frames()
    with torch.no_grad():
        full = model(tokens, mask, lengths, decoder_fraction=1.0)
        h = model.backbone(model.embed_frames(tokens, mask))
        decoder = decoder_losses_per_frame(model, tokens, mask, lengths, h)
    c0 = [
        F.cross_entropy(model.codebook0_head(h[b, t - 1]), tokens[b, t, 0])
        for b, n in enumerate(lengths.tolist())
        for t in range(5, n)
    ]
    assert full.target_frames == full.decoder_frames == 15 + 10
    assert torch.allclose(full.c0_loss, torch.stack(c0).mean(), atol=1e-5)
    assert torch.allclose(full.decoder_loss, decoder.mean(), atol=1e-5)


def test_the_amortised_decoder_loss_is_an_unbiased_estimate_on_a_random_sixteenth_of_the_frames():
    model, (tokens, mask, lengths) = make_model(), make_frames()
    with torch.no_grad():
        full = model(tokens, mask, lengths, decoder_fraction=1.0)
        h = model.backbone(model.embed_frames(tokens, mask))
        per_frame = decoder_losses_per_frame(model, tokens, mask, lengths, h).mean(-1)  # [25]
        draws = [
            model(
                tokens,
                mask,
                lengths,
                decoder_fraction=1 / 16,
                generator=torch.Generator().manual_seed(seed),
            )
            for seed in range(200)
        ]
    pairs = torch.combinations(torch.arange(25))  # [300, 2]
    pair_means = per_frame[pairs].mean(-1)
    picked = set()
    for draw in draws:
        assert draw.decoder_frames == 2 and torch.allclose(
            draw.c0_loss, full.c0_loss
        )  # round(25 / 16)
        gap, pair = (pair_means - draw.decoder_loss).abs().min(0)
        assert gap < 1e-5, "the decoder loss is not the mean over two of the target frames"
        picked.add(int(pair))
    assert len(picked) > 60  # a fresh random pair of frames each step, not a fixed subset
    estimates = torch.stack([d.decoder_loss for d in draws])
    standard_error = estimates.std() / len(draws) ** 0.5
    assert abs(estimates.mean() - full.decoder_loss) < 4 * standard_error  # unbiased


def test_cached_generation_returns_the_frames_of_uncached_generation():
    model, (tokens, mask, _) = make_model(), make_frames()
    prompt = (tokens[:1, :8], mask[:1, :8])
    cached = model.generate(
        *prompt, max_frames=30, use_cache=True, generator=torch.Generator().manual_seed(3)
    )
    uncached = model.generate(
        *prompt, max_frames=30, use_cache=False, generator=torch.Generator().manual_seed(3)
    )
    assert cached.shape == (K, 30) and torch.equal(cached, uncached)
    assert (
        not model.backbone.caches_are_setup() and not model.decoder.caches_are_setup()
    )  # caches were temporary
    frames = iter([torch.ones(1, K, dtype=torch.long)] * 3 + [torch.zeros(1, K, dtype=torch.long)])
    model.sample_frame = lambda *args, **kwargs: next(
        frames
    )  # three frames, then the all-zero end frame
    assert torch.equal(model.generate(*prompt, max_frames=30), torch.ones(K, 3, dtype=torch.long))


def test_the_true_codebook0_is_completed_by_the_decoder_greedily_from_the_teacher_forced_states():
    """`complete_codebook0` at top-1 keeps each frame's codebook 0 and decodes the others greedily from the
    backbone state before the frame: so the training path's teacher-forced logits (`decoder_logits`) on its
    output pick that output again."""
    model, (tokens, mask, _) = make_model(), make_frames()
    end = torch.zeros(1, 1, K + 1, dtype=torch.long)
    end_mask = torch.ones_like(end, dtype=torch.bool)
    end_mask[..., -1] = False
    tokens, mask = torch.cat([tokens[:1], end], 1), torch.cat([mask[:1], end_mask], 1)  # 20 + end
    codes = model.complete_codebook0(tokens, mask, temperature=1.0, topk=1)
    assert codes.shape == (K, 15) and torch.equal(codes[0], tokens[0, 5:20, 0])
    assert not torch.equal(codes[1:], tokens[0, 5:20, 1:K].T)  # the decoder's, not the true ones
    with torch.no_grad():
        states = model.backbone(model.embed_frames(tokens, mask))[0, 4:19]  # the frame before each
        logits = model.decoder_logits(states, codes.T)  # [15, K-1, CARD]
    assert torch.equal(logits.argmax(-1), codes[1:].T)


def csm_1b_parameters() -> int:
    """CSM-1B: llama-1B backbone and llama-100M decoder without their token embeddings and outputs, text and
    code embeddings, projection, codebook-0 head and the per-codebook audio head (32 codebooks of 2051)."""

    def llama(layers, dim, heads, kv_heads, ffn):
        head = dim // heads
        attention = dim * dim * 2 + dim * kv_heads * head * 2
        return layers * (attention + 3 * dim * ffn + 2 * dim) + dim

    backbone, decoder = llama(16, 2048, 32, 8, 8192), llama(4, 1024, 8, 2, 8192)
    return (
        backbone
        + decoder
        + 128_256 * 2048
        + 2051 * 32 * 2048
        + 2048 * 1024
        + 2048 * 2051
        + 31 * 1024 * 2051
    )


def test_the_published_scale_preset_is_csm_1b(make_cfg):
    cfg = make_cfg("model=csm", "model/csm/size=1b")
    model = instantiate(cfg.model.task.net)(
        text_vocab_size=128_256, cardinality=cfg.model.task.audio_vocab_size, num_codebooks=32
    )
    assert model.audio_head.device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == csm_1b_parameters()
    assert (
        sum(p.numel() for p in model.backbone.parameters()) == 973_146_112
    )  # Llama-3.2-1B less its embedding


def test_training_on_the_tiny_corpus_lowers_both_losses(tiny_corpus, make_cfg):
    cfg = make_cfg("experiment=tiny_csm")
    task, before, after = fit_on_tiny_corpus(cfg)
    for name in ("val/c0_loss", "val/decoder_loss"):
        assert after[name] < 0.9 * before[name], (name, before, after)
    assert (
        after["train/decoder_frames"] < 0.5 * 16 * 30
    )  # a quarter of the audio frames reach the decoder
    with pytest.raises(ValueError, match="writes SPEECH"):
        task.respond(text="the dog", modality="TEXT")


def test_previous_turns_of_a_conversation_precede_the_utterance(tiny_corpus, make_cfg, tmp_path):
    from slmlab.data.datamodule import UtteranceDataset
    from slmlab.data.manifest import read_manifest

    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    for i, record in enumerate(
        records[:6]
    ):  # two conversations of three turns, in shuffled manifest order
        record.extra.update({"conversation": f"c{i % 2}", "turn": i // 2})
    codes = [torch.full((3 + i, 4), i) for i in range(len(records))]
    dataset = UtteranceDataset(records, {"codes": codes}, {"codes": None}, context_turns=2)
    assert [turn["id"] for turn in dataset[4]["context"]] == [
        records[0].id,
        records[2].id,
    ]  # c0 turns 0 and 1
    assert dataset[1]["context"] == [] and dataset[3]["context"][0]["id"] == records[1].id
    assert (
        UtteranceDataset(records, {"codes": codes}, {"codes": None})[4]["context"] == []
    )  # off by default

    cfg = make_cfg("experiment=tiny_csm")
    _, task = build(cfg)
    batch = {
        "text": [records[4].text],
        "speaker": [records[4].speaker],
        "codes": codes[4][None],
        "codes_lengths": torch.tensor([len(codes[4])]),
        "context": [dataset[4]["context"]],
    }
    tokens, mask, lengths = task.batch_frames(batch)
    alone = [
        len(task.segment(r.text, r.speaker, c)[0])
        for r, c in ((records[0], codes[0]), (records[2], codes[2]), (records[4], codes[4]))
    ]
    assert int(lengths[0]) == sum(alone)
    audio_frames = mask[0, :, :-1].any(-1)
    assert int(audio_frames.sum()) == sum(
        len(codes[i]) + 1 for i in (0, 2, 4)
    )  # each turn ends with its end frame


def test_cli_trains_and_speaks_a_text(tiny_corpus, data_dir, tmp_path):
    from conftest import run_cli

    run = tmp_path / "run"
    run_cli(
        "slmlab-train",
        "experiment=tiny_csm",
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"val/c0_loss", "val/decoder_loss", "test/c0_loss", "train/decoder_loss"} <= set(metrics)

    def speak(seed: int) -> bytes:  # csm samples its codes (top-k): the seed fixes them
        out = tmp_path / f"generated{seed}"
        run_cli(
            "slmlab-generate",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "text=the dog runs",
            "modality=SPEECH",
            "speaker=us_m3",
            "generation.max_seconds=1.0",
            f"seed={seed}",
            f"hydra.run.dir={out}",
            cwd=tmp_path,
        )
        return (out / "output.wav").read_bytes()

    first = speak(0)
    assert speak(0) == first != speak(1)
    # the run's checkpoint leaves slmlab in Sesame's layout with the trained weights
    run_cli(
        "slmlab-convert",
        f"input={run / 'checkpoints' / 'last.ckpt'}",
        f"output={tmp_path / 'sesame'}",
        "to=sesame",
        f"hydra.run.dir={tmp_path / 'convert'}",
        cwd=tmp_path,
    )
    exported, _ = import_checkpoint(tmp_path / "sesame")
    trained = load_tensors(run / "checkpoints" / "last.ckpt")["state_dict"]
    for key, tensor in exported.state_dict().items():
        assert torch.equal(tensor, trained[f"net.{key}"]), key


def test_the_backbone_loads_a_local_hugging_face_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from slmlab.models.csm import build_csm

    config = LlamaConfig(
        vocab_size=TEXT,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_theta=500_000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    llama.save_pretrained(tmp_path / "llama")
    model = build_csm(
        TEXT, CARD, K, BACKBONE, DECODER, pretrained_backbone=str(tmp_path / "llama")
    ).eval()
    ids = torch.randint(0, TEXT, (1, 12))
    with (
        torch.no_grad()
    ):  # the same text through both: torchtune's backbone now computes what the Llama does
        ours = model.backbone(model.text_embeddings(ids))
        reference = llama.model(input_ids=ids).last_hidden_state
    assert torch.allclose(ours, reference, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_csm(TEXT, CARD, K, BACKBONE, DECODER, pretrained_backbone=str(tmp_path / "missing"))


def test_top_k_sampling_follows_the_model_within_its_top_k():
    """sample_topk draws from softmax(logits / T) renormalised over the k best ids, never outside them."""
    from slmlab.models.csm import sample_topk

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).log_softmax(-1)
    draws = 20_000
    for topk, temperature in [(3, 1.0), (3, 0.5), (5, 2.0)]:
        ids = sample_topk(
            logits.expand(draws, -1), topk, temperature, torch.Generator().manual_seed(0)
        )
        shares = torch.bincount(ids[:, 0], minlength=5) / draws
        expected = torch.zeros(5)
        expected[:topk] = (logits[:topk] / temperature).softmax(-1)
        torch.testing.assert_close(shares, expected, atol=0.015, rtol=0)
        assert not ids.ge(topk).any()


@pytest.mark.parametrize("precision", ["bf16 weights", "bf16 autocast"])
def test_generation_runs_in_bf16(precision):
    """As on a GPU: weights in bf16 (precision=bf16-true), or fp32 weights under bf16 autocast
    (bf16-mixed), where the KV caches must take the dtype the keys arrive in. Cached and uncached frames
    agree in bf16 too."""
    model, (tokens, mask, _) = make_model(), make_frames()
    prompt = (tokens[:1, :8], mask[:1, :8])
    if precision == "bf16 weights":
        model, context = model.to(torch.bfloat16), contextlib.nullcontext()
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    with context:
        codes = [
            model.generate(
                *prompt, max_frames=6, use_cache=cached, generator=torch.Generator().manual_seed(3)
            )
            for cached in (True, False)
        ]
    assert codes[0].dtype == torch.long and 0 < codes[0].shape[1] <= 6
    assert torch.equal(*codes)

"""SpeechLM: output lengths and masks follow the real encoders, labels, freezing, LoRA, save/load, training."""

import json

import pytest
import torch
from conftest import fit_on_tiny_corpus
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from slmlab.constants import CTC_ALPHABET, SAMPLE_RATE
from slmlab.models.pretrained import load_or_build_speechlm
from slmlab.models.speechlm import SpeechLM, build_speechlm, ctc_character_ids, ctc_compress
from slmlab.tokenizers.frontends import build_feature_extractor, extract_features
from slmlab.tokenizers.prompts import AUDIO_TOKEN, prompt_batch
from slmlab.tokenizers.text import fit_bpe

ENCODERS = {
    "whisper": {
        "model_type": "whisper",
        "num_mel_bins": 80,
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "max_source_positions": 1500,
    },
    "wav2vec2": {
        "model_type": "wav2vec2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16] * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "hubert": {
        "model_type": "hubert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16] * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
}
DECODERS = {
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "tie_word_embeddings": False,
    },
    "llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256},
}
LENGTHS = [3201, SAMPLE_RATE, 23457]  # samples at 16 kHz, odd on purpose


@pytest.fixture(scope="module")
def tokenizer():
    tok = fit_bpe(
        ["the dog runs", "a small cat sleeps on the red mat", "three birds sing"] * 20,
        vocab_size=300,
    )
    tok.add_special_tokens([AUDIO_TOKEN])
    return tok


def make_model(tokenizer, encoder="whisper", decoder="qwen2", stack_factor=3, **kwargs) -> SpeechLM:
    torch.manual_seed(0)
    model = build_speechlm(
        len(tokenizer),
        tokenizer.hf.convert_tokens_to_ids(AUDIO_TOKEN),
        ENCODERS[encoder],
        DECODERS[decoder],
        stack_factor=stack_factor,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        **kwargs,
    )
    return model.eval()


def waveforms(lengths=LENGTHS):
    generator = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(n, generator=generator) for n in lengths]


def inputs_for(model, tokenizer, wavs, targets=None, padding_side="right"):
    extractor = build_feature_extractor(model.config.audio_config)
    features, lengths = extract_features(extractor, wavs, SAMPLE_RATE)
    prompts = prompt_batch(
        tokenizer,
        f"{AUDIO_TOKEN} transcribe:",
        model.audio_output_lengths(lengths).tolist(),
        targets,
        padding_side,
    )
    return {**prompts, "features": features, "feature_lengths": lengths}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_default_front_end_follows_the_encoder(encoder):
    """Whisper: log-mel [B, 80, F] at 100 frames per second; wav2vec2/HuBERT: the waveform [B, S].
    Each utterance is zero-padded after its own features."""
    config = AutoConfig.for_model(**ENCODERS[encoder])
    extractor = build_feature_extractor(config)
    features, lengths = extract_features(extractor, waveforms(), SAMPLE_RATE)
    if encoder == "whisper":
        assert isinstance(extractor, WhisperFeatureExtractor)
        assert features.shape[:2] == (3, 80)
        assert lengths.tolist() == [n // 160 for n in LENGTHS]  # 10 ms hop
    else:
        assert isinstance(extractor, Wav2Vec2FeatureExtractor)
        assert features.shape == (3, max(LENGTHS)) and lengths.tolist() == LENGTHS
        torch.testing.assert_close(
            features[0, : LENGTHS[0]].std(), torch.tensor(1.0), atol=1e-3, rtol=0
        )
    assert extractor.sampling_rate == SAMPLE_RATE
    assert not features[0, ..., lengths[0] :].any()


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_output_lengths_and_masks_follow_the_real_encoder(tokenizer, encoder):
    model = make_model(tokenizer, encoder)
    extractor = build_feature_extractor(model.config.audio_config)
    features, lengths = extract_features(extractor, waveforms(), SAMPLE_RATE)
    audio = model.encode(features, lengths)
    batched, batched_lengths = audio.embeds, audio.lengths
    for i, wav in enumerate(waveforms()):
        alone = extract_features(extractor, [wav], SAMPLE_RATE)[0]
        states = model.encoder(**{model.input_name: alone}).last_hidden_state
        assert model.encoder_output_lengths(lengths[i : i + 1]).item() == states.shape[1]
        assert batched_lengths[i].item() == -(-states.shape[1] // 3)  # stacking by 3 rounds up
        # the padded batch gives this utterance exactly what it gets alone, and zeros after its end
        single = model.projector(states)
        torch.testing.assert_close(batched[i, : single.shape[1]], single[0], atol=1e-4, rtol=1e-4)
    ten_seconds = extract_features(extractor, [torch.zeros(10 * SAMPLE_RATE)], SAMPLE_RATE)[1]
    assert abs(model.encoder_output_lengths(ten_seconds).item() - 500) <= 1  # 50 Hz for all three


@pytest.mark.parametrize(
    "encoder,decoder", [("whisper", "qwen2"), ("wav2vec2", "llama"), ("hubert", "gpt2")]
)
def test_mixed_audio_lengths_give_each_utterance_its_own_loss(tokenizer, encoder, decoder):
    model = make_model(tokenizer, encoder, decoder)
    targets = [
        tokenizer.encode(t)[1:]
        for t in ("the dog runs", "a small cat sleeps on the red mat", "three birds")
    ]
    batch = inputs_for(model, tokenizer, waveforms(), targets)
    batch_logits = model(**batch).logits
    for i, wav in enumerate(waveforms()):
        alone = inputs_for(model, tokenizer, [wav], [targets[i]])
        width = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][i, :width], alone["input_ids"][0])
        torch.testing.assert_close(
            batch_logits[i, :width], model(**alone).logits[0], atol=1e-4, rtol=1e-4
        )


def test_labels_are_the_transcript_only(tokenizer):
    target = tokenizer.encode("the dog runs")[1:]
    batch = prompt_batch(tokenizer, f"{AUDIO_TOKEN} transcribe:", [5, 2], [target, target[:2]])
    audio_id = tokenizer.hf.convert_tokens_to_ids(AUDIO_TOKEN)
    prompt_len = len(tokenizer.encode(" transcribe:", bos=False, eos=False)) + 1  # + bos
    for row, n_audio, tgt in ((0, 5, target), (1, 2, target[:2])):
        ids, labels, mask = (
            batch["input_ids"][row],
            batch["labels"][row],
            batch["attention_mask"][row],
        )
        assert int((ids == audio_id).sum()) == n_audio
        scored = labels != -100
        assert labels[scored].tolist() == tgt  # loss on transcript + eos, nothing else
        assert (
            scored.nonzero().min().item() == prompt_len + n_audio
        )  # bos, audio and prompt are never scored
        assert not scored[mask == 0].any()  # padding is never scored
    left = prompt_batch(tokenizer, f"{AUDIO_TOKEN} transcribe:", [5, 2], padding_side="left")
    assert left["attention_mask"][1, :3].sum() == 0 and left["attention_mask"][:, -1].all()
    with pytest.raises(ValueError, match="exactly once"):
        prompt_batch(tokenizer, "transcribe:", [1])


def test_hybrid_ctc_loss_adds_to_the_lm_loss(tokenizer):
    texts = ("the dog runs", "A small cat sleeps on the red mat!", "three birds")
    targets = [tokenizer.encode(t)[1:] for t in texts]
    ctc_targets, ctc_lengths = ctc_character_ids(texts)
    assert ctc_lengths.tolist() == [12, 33, 11]  # "!" is not in the alphabet
    assert ctc_targets[1, :2].tolist() == [CTC_ALPHABET.index("a") + 1, CTC_ALPHABET.index(" ") + 1]
    plain, hybrid = make_model(tokenizer), make_model(tokenizer, ctc_weight=0.5)
    batch = inputs_for(plain, tokenizer, waveforms(), targets)
    out = hybrid(**batch, ctc_targets=ctc_targets, ctc_target_lengths=ctc_lengths)
    assert out.ctc_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.ctc_loss)
    assert plain.ctc_head is None
    assert plain(**batch, ctc_targets=ctc_targets, ctc_target_lengths=ctc_lengths).ctc_loss is None


def test_ctc_compression_averages_each_run_of_one_label_and_drops_the_blanks():
    """Row 0: runs of labels 1, 2, 1 (blanks between); row 1: label 3, a blank, label 3 again (two
    runs, as CTC reads them), then padding that is not read; row 2: all blank, one token."""
    labels = torch.tensor(
        [[0, 1, 1, 0, 2, 2, 1, 0], [3, 0, 3, 3, 3, 3, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    )
    lengths = torch.tensor([8, 5, 4])
    frames = torch.arange(8.0)
    states = torch.stack([frames + 100 * b for b in range(3)])[..., None].repeat(1, 1, 2)
    states.requires_grad_(True)
    tokens, runs = ctc_compress(states, lengths, labels)
    assert runs.tolist() == [3, 2, 1]
    expected = torch.tensor([[1.5, 4.5, 6.0], [100.0, 103.0, 0.0], [201.5, 0.0, 0.0]])
    torch.testing.assert_close(tokens, expected[..., None].repeat(1, 1, 2))
    tokens.sum().backward()  # each kept frame's share of its run's mean; blanks and padding get none
    shares = torch.tensor(
        [
            [0, 1 / 2, 1 / 2, 0, 1 / 2, 1 / 2, 1, 0],
            [1, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0],
            [1 / 4] * 4 + [0] * 4,
        ]
    )
    torch.testing.assert_close(states.grad, shares[..., None].repeat(1, 1, 2))


def greedy_runs(labels: torch.Tensor, length: int) -> int:
    """Runs of one non-blank label in labels[:length] (at least 1), counted one frame at a time."""
    runs, previous = 0, 0
    for label in labels[:length].tolist():
        runs += label != 0 and label != previous
        previous = label
    return max(runs, 1)


def test_a_ctc_compressed_speechlm_reads_one_token_per_run_of_its_ctc_labels(tokenizer):
    with pytest.raises(ValueError, match="ctc_weight > 0"):
        make_model(tokenizer, compressor="ctc")
    model = make_model(tokenizer, stack_factor=1, ctc_weight=0.5, compressor="ctc")
    extractor = build_feature_extractor(model.config.audio_config)
    features, lengths = extract_features(extractor, waveforms(), SAMPLE_RATE)
    audio = model.encode(features, lengths)
    labels = audio.ctc_logits.argmax(-1)
    runs = [greedy_runs(labels[i], n) for i, n in enumerate(audio.state_lengths.tolist())]
    assert audio.lengths.tolist() == runs and runs != audio.state_lengths.tolist()
    with pytest.raises(ValueError, match="depends on the audio"):
        model.audio_output_lengths(lengths)
    targets = [tokenizer.encode(t)[1:] for t in ("the dog runs", "a small cat", "three birds")]
    prompts = prompt_batch(tokenizer, f"{AUDIO_TOKEN} transcribe:", runs, targets)
    # one encoder pass (the encoding that sized the prompt) or two give the same loss
    once = model(**prompts, audio=audio)
    twice = model(**prompts, features=features, feature_lengths=lengths)
    torch.testing.assert_close(once.loss, twice.lm_loss)
    once.loss.backward()  # the LM loss reaches the encoder through the averaged states
    assert model.encoder.layers[0].fc1.weight.grad.abs().sum() > 0
    left = prompt_batch(tokenizer, f"{AUDIO_TOKEN} transcribe:", runs, padding_side="left")
    left.pop("labels")
    new = model.generate(**left, audio=audio, max_new_tokens=3, pad_token_id=tokenizer.pad_id)
    assert new.shape == (3, 3)


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def names(model, prefix) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


@pytest.mark.parametrize("decoder", ["qwen2", "gpt2"])
def test_each_freezing_mode_leaves_exactly_the_intended_parameters_trainable(tokenizer, decoder):
    fresh = make_model(tokenizer, "whisper", decoder)
    encoder = names(fresh, "encoder.") - {
        "encoder.embed_positions.weight"
    }  # Whisper keeps positions frozen
    projector, whole_decoder = names(fresh, "projector."), names(fresh, "decoder.")
    head_weight = fresh.get_output_embeddings().weight
    head = {
        n for n, p in fresh.named_parameters() if p is head_weight
    }  # GPT-2: the tied input embedding
    assert trainable(fresh) == encoder | projector | whole_decoder
    expected = {
        "encoder": projector | whole_decoder,
        "projector": encoder | whole_decoder,
        "decoder": encoder | projector,
        "decoder_except_head": encoder | projector | head,
    }
    for part, want in expected.items():
        model = make_model(tokenizer, "whisper", decoder)
        model.freeze([part])
        assert trainable(model) == want, part
    model = make_model(tokenizer, "whisper", decoder)
    model.freeze(["encoder", "decoder_except_head"])
    assert trainable(model) == projector | head
    with pytest.raises(ValueError, match="cannot freeze"):
        model.freeze(["everything"])


def test_lora_trains_only_the_adapters(tokenizer):
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    model = make_model(tokenizer, "whisper", "qwen2", lora=lora)
    model.freeze(["encoder"])
    decoder_trainable = {n for n in trainable(model) if n.startswith("decoder.")}
    assert decoder_trainable and all("lora_" in n for n in decoder_trainable)
    assert trainable(model) - decoder_trainable == names(model, "projector.")
    # q_proj: 32 -> 32; v_proj: 32 -> 16 (one of two heads for keys and values); A is r x in, B is out x r
    expected = 2 * (4 * (32 + 32) + 4 * (32 + 16))
    assert sum(model.get_parameter(n).numel() for n in decoder_trainable) == expected
    with pytest.raises(ValueError, match="LoRA"):
        model.freeze(["decoder"])


@pytest.mark.parametrize(
    "decoder,lora",
    [("qwen2", None), ("gpt2", None), ("llama", {"r": 2, "target_modules": ["q_proj"]})],
)
def test_save_pretrained_and_from_pretrained_give_identical_logits(
    tokenizer, decoder, lora, tmp_path
):
    model = make_model(tokenizer, "whisper", decoder, lora=lora, ctc_weight=0.3)
    batch = inputs_for(model, tokenizer, waveforms(), [tokenizer.encode("the dog")[1:]] * 3)
    model.save_pretrained(tmp_path)
    loaded = SpeechLM.from_pretrained(tmp_path).eval()
    assert loaded.config.audio_token_id == model.config.audio_token_id
    assert type(loaded.decoder) is type(model.decoder)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    torch.testing.assert_close(loaded.ctc_head.weight, model.ctc_head.weight, atol=0, rtol=0)


def test_pretrained_encoder_and_decoder_load_from_local_folders(tokenizer, tmp_path):
    """No hub: a tiny Whisper and a tiny Qwen2 saved to disk are loaded through the same code as real ones."""
    whisper = WhisperModel(
        WhisperConfig(
            **{k: v for k, v in ENCODERS["whisper"].items() if k != "model_type"},
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
        )
    )
    whisper.save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "whisper")
    qwen = make_model(tokenizer, "whisper", "qwen2").decoder
    qwen.config.vocab_size = qwen.get_input_embeddings().num_embeddings - 1
    AutoModelForCausalLM.from_config(qwen.config).save_pretrained(
        tmp_path / "qwen2"
    )  # one token short

    model = load_or_build_speechlm(
        len(tokenizer),
        5,
        {"pretrained_path": str(tmp_path / "whisper")},
        {"pretrained_path": str(tmp_path / "qwen2")},
        stack_factor=2,
    )
    torch.testing.assert_close(model.encoder.conv1.weight, whisper.encoder.conv1.weight)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)  # resized for <|audio|>
    mixed = load_or_build_speechlm(  # a pretrained encoder under a decoder built from its sizes
        len(tokenizer),
        5,
        {"pretrained_path": str(tmp_path / "whisper")},
        {**DECODERS["llama"], "pretrained_path": None},
    )
    torch.testing.assert_close(mixed.encoder.conv1.weight, whisper.encoder.conv1.weight)
    assert mixed.config.text_config.model_type == "llama"
    assert mixed.get_input_embeddings().num_embeddings == len(tokenizer)
    assert isinstance(
        build_feature_extractor(model.config.audio_config, str(tmp_path / "whisper")),
        WhisperFeatureExtractor,
    )
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_or_build_speechlm(
            len(tokenizer), 5, {"pretrained_path": "openai/whisper-tiny"}, DECODERS["qwen2"]
        )


@pytest.mark.parametrize(
    "encoder,decoder",
    [
        ("whisper_tiny", "qwen2_tiny"),
        ("hubert_tiny", "gpt2_tiny"),
        ("fastconformer_corpus", "qwen2_tiny"),
    ],
)
def test_training_on_the_tiny_corpus_lowers_the_loss(tiny_corpus, make_cfg, encoder, decoder):
    """Each encoder preset (50 Hz Whisper and HuBERT, the 25 Hz FastConformer) learns, and its
    stack_factor gives 12.5 audio tokens per second."""
    cfg = make_cfg(
        "experiment=tiny_speechlm",
        f"model/speechlm/encoder={encoder}",
        f"model/speechlm/decoder={decoder}",
        "trainer.max_steps=40",
        "model.task.generation.max_new_tokens=4",
    )
    task, before, after = fit_on_tiny_corpus(cfg)
    assert after["val/loss"] < 0.8 * before["val/loss"], (before, after)
    assert after["val/token_accuracy"] > before["val/token_accuracy"]
    assert after["train/audio_tokens_per_s"] == pytest.approx(12.5, rel=0.1)
    with pytest.raises(ValueError, match="writes TEXT"):  # the arm cannot be asked for speech
        task.respond(audio=torch.zeros(SAMPLE_RATE), modality="SPEECH")
    with pytest.raises(ValueError, match="takes audio"):
        task.respond(text="the dog runs")


def script_the_decoder(model, a: int, b: int, c: int, d: int) -> None:
    """Replace the decoder's logits with a fixed script over four tokens, whatever the audio: first
    step a 0.40, b 0.35, c 0.25; after a (and after c or d) uniform over a, b, c, d; after b, d 0.97.
    Greedy takes a then a (0.40 x 0.25 = 0.10); the best pair is b then d (0.35 x 0.97 = 0.34)."""
    vocab = model.get_output_embeddings().weight.shape[0]

    def log_probs(probs: dict[int, float]) -> torch.Tensor:
        row = torch.full((vocab,), -50.0)
        row[list(probs)] = torch.tensor(list(probs.values())).log()
        return row

    first = log_probs({a: 0.40, b: 0.35, c: 0.25})
    after_b = log_probs({a: 0.01, b: 0.01, c: 0.01, d: 0.97})
    uniform = log_probs(dict.fromkeys((a, b, c, d), 0.25))

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        n, length = output.logits.shape[:2]
        if ids is None or ids.shape[1] == 0:  # the prompt: embeddings only, nothing generated yet
            rows = first.expand(n, -1)
        else:
            rows = torch.where((ids[:, -1] == b)[:, None], after_b, uniform)
        output.logits = rows[:, None].expand(n, length, vocab).clone()
        return output

    model.decoder.register_forward_hook(hook, with_kwargs=True)


def test_validation_wer_and_cer_score_the_transcripts_against_the_references(tiny_corpus, make_cfg):
    """Transcripts that drop each reference's last word: WER is the dropped words over the reference
    words, CER the dropped characters over the reference characters, across two batches."""
    from hydra.utils import instantiate

    from slmlab.runs import build

    datamodule, task = build(make_cfg("experiment=tiny_speechlm"))
    references, step = [], task.validation_step

    def recording(batch, batch_idx):
        references.extend(batch["text"])
        return step(batch, batch_idx)

    def drop_last_word(waveforms, **generation):
        return [t.rsplit(" ", 1)[0] for t in references[-len(waveforms) :]]

    task.validation_step, task.transcribe = recording, drop_last_word
    trainer = instantiate(
        make_cfg("experiment=tiny_speechlm").trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    hypotheses = [t.rsplit(" ", 1)[0] for t in references]
    assert len(references) > datamodule.batch_size  # two batches reached the metric
    words = sum(len(t.split()) for t in references)
    assert metrics["val/wer"] == pytest.approx(len(references) / words)
    characters = sum(len(t) for t in references)
    dropped = characters - sum(len(h) for h in hypotheses)
    assert metrics["val/cer"] == pytest.approx(dropped / characters)


def test_greedy_beam_and_sampling_generation(tokenizer):
    model = make_model(tokenizer)
    batch = inputs_for(model, tokenizer, waveforms(), padding_side="left")
    batch.pop("labels")
    common = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    greedy = model.generate(**batch, do_sample=False, max_new_tokens=5, **common)
    # the first greedy token is the argmax of the forward pass at the last prompt position (unpadded row)
    full = batch["attention_mask"].all(-1)
    assert full.sum() == 1
    assert torch.equal(greedy[full, 0], model(**batch).logits[full, -1].argmax(-1))

    a, b, c, d = 10, 11, 12, 13
    script_the_decoder(model, a, b, c, d)
    two = {"min_new_tokens": 2, "max_new_tokens": 2, **common}
    greedy = model.generate(**batch, do_sample=False, **two)
    beams = model.generate(**batch, do_sample=False, num_beams=2, **two)
    assert greedy.tolist() == [[a, a]] * 3 and beams.tolist() == [[b, d]] * 3
    one = inputs_for(model, tokenizer, waveforms()[:1], padding_side="left")
    one.pop("labels")
    draws = 4000
    torch.manual_seed(0)
    for sampling, expected in [
        ({"temperature": 0.5}, torch.tensor([0.40, 0.35, 0.25]) ** 2),  # p^(1/T), renormalised
        ({"temperature": 1.0, "top_k": 2}, torch.tensor([0.40, 0.35, 0.0])),
    ]:
        firsts = model.generate(
            **one,
            do_sample=True,
            num_return_sequences=draws,
            max_new_tokens=1,
            **sampling,
            **common,
        )[:, 0]
        shares = torch.stack([(firsts == t).float().mean() for t in (a, b, c)])
        torch.testing.assert_close(shares, expected / expected.sum(), atol=0.03, rtol=0)
        assert torch.isin(firsts, torch.tensor([a, b, c])).all()


def test_cli_trains_exports_and_generates_from_a_wav(tiny_corpus, data_dir, tmp_path):
    """slmlab-train writes a checkpoint and a save_pretrained folder; slmlab-generate transcribes a WAV with it."""
    from conftest import run_cli

    run = tmp_path / "run"
    run_cli(
        "slmlab-train",
        "experiment=tiny_speechlm",
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "model.task.generation.max_new_tokens=4",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {
        "val/wer",
        "val/cer",
        "val/token_accuracy",
        "test/wer",
        "train/audio_tokens_per_s",
    } <= set(metrics)
    assert (
        SpeechLM.from_pretrained(run / "pretrained").config.stack_factor == 2
    )  # the FastConformer's
    assert (run / "pretrained" / "preprocessor_config.json").is_file() and (
        run / "pretrained" / "tokenizer.json"
    ).is_file()

    wav = (
        tiny_corpus.root
        / "wav16k"
        / sorted(p.name for p in (tiny_corpus.root / "wav16k").glob("*.wav"))[0]
    )
    out = tmp_path / "generated"
    proc = run_cli(
        "slmlab-generate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"audio={wav}",
        "generation.num_beams=2",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert (out / "output.txt").read_text().strip() in proc.stdout

"""Spirit LM: speech tokens, the interleaved vocabulary and sequences, modality-masked generation, training."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from conftest import fit_on_tiny_corpus
from hydra.utils import instantiate
from transformers import HubertConfig, HubertModel, SpeechT5HifiGan, SpeechT5HifiGanConfig

from slmlab.data.manifest import load_audio, read_manifest
from slmlab.models.llama import build_llama_lm
from slmlab.models.spiritlm import generate_in_modality
from slmlab.runs import check_speech_tokenizer
from slmlab.tasks.spiritlm import SpiritLMTask
from slmlab.tokenizers.interleaved import (
    InterleavedSequences,
    InterleavedVocabulary,
    draw_spans,
    word_boundaries,
)
from slmlab.tokenizers.text import load_or_fit_bpe
from slmlab.tokenizers.unit_vocoder import UnitToMel, UnitVocoder
from slmlab.tokenizers.units import dedup, fit_speech_tokenizer, load_or_fit_speech_tokenizer

# the sizes of experiment=tiny_spiritlm_*, so the tests and the tiny training runs share one fitted tokenizer
TINY_SPEECH = {"n_units": 50, "n_styles": 8, "decoder": {"epochs": 6, "dim": 64}}


@pytest.fixture(scope="module")
def speech_tokenizer(tiny_corpus):
    return load_or_fit_speech_tokenizer(tiny_corpus, **TINY_SPEECH)


@pytest.fixture(scope="module")
def waveform(tiny_corpus):
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    return load_audio(records[0].audio_filepath, 16000)


@pytest.fixture
def vocab(tiny_corpus, speech_tokenizer):
    return InterleavedVocabulary(
        load_or_fit_bpe(tiny_corpus, vocab_size=256), speech_tokenizer, ("Hu", "Pi", "St")
    )


def test_units_round_trip_through_strings_and_vocabulary_ids(speech_tokenizer, vocab, waveform):
    units = speech_tokenizer.encode(waveform)
    text = speech_tokenizer.units_to_string(units)
    assert text.startswith("[Hu") and text.count("[Hu") == len(units)
    assert [value for _, value in speech_tokenizer.parse(text)] == units.tolist()
    merged = speech_tokenizer.merge(speech_tokenizer.encode_streams(waveform))
    assert speech_tokenizer.parse(speech_tokenizer.to_string(merged)) == merged
    assert vocab.speech_tokens(vocab.speech_ids(merged)) == merged
    with pytest.raises(
        ValueError, match="already holds"
    ):  # a tokenizer extended once cannot be extended again
        InterleavedVocabulary(vocab.text, speech_tokenizer, ("Hu",))
    with pytest.raises(ValueError, match="out of range"):
        speech_tokenizer.parse("[Hu50]")
    with pytest.raises(ValueError, match="not a speech token"):
        speech_tokenizer.parse("[Hu1] dog")


def test_streams_have_their_rates_and_dedup_merges_repeats(speech_tokenizer, waveform):
    streams = speech_tokenizer.encode_streams(waveform)
    seconds = len(waveform) / 16000
    assert len(streams["units"]) == len(waveform) // 640  # 25 Hz
    assert len(streams["pitch"]) == len(waveform) // 1280  # 12.5 Hz
    assert (
        len(streams["style"]) == -(-len(waveform) // 16000) == round(seconds + 0.5)
    )  # one per started second
    units = speech_tokenizer.encode(waveform)
    assert torch.equal(units, torch.unique_consecutive(streams["units"]))
    assert (units[1:] != units[:-1]).all() and len(units) < len(streams["units"])
    values, counts = dedup(torch.tensor([3, 3, 3, 7, 7, 3]))
    assert values.tolist() == [3, 7, 3] and counts.tolist() == [3, 2, 1]
    merged = speech_tokenizer.merge(
        {"units": streams["units"], "pitch": streams["pitch"], "style": streams["style"]}
    )
    kinds = [kind for kind, _ in merged]
    assert kinds[0] == "St" and kinds.count("St") == len(
        dedup(streams["style"])[0]
    )  # leads; repeats merged
    units_only = [value for kind, value in merged if kind == "Hu"]
    assert units_only == units.tolist()


def test_word_boundaries_and_spans_on_a_known_alignment(vocab):
    words = [
        {"word": w, "start": s, "end": e}
        for w, s, e in [
            ("the", 0.0, 0.2),
            ("dog", 0.3, 0.6),
            ("runs", 0.6, 1.0),
            ("fast", 1.2, 1.6),
        ]
    ]
    assert word_boundaries(words, 1.68) == pytest.approx([0.0, 0.25, 0.6, 1.1, 1.68])
    units = (
        torch.arange(42) % vocab.speech.n_units
    )  # 42 frames at 25 Hz = 1.68 s, every frame a new unit
    sequences = InterleavedSequences(vocab, text_span_words=(1, 2), speech_span_words=(1, 2))
    rng, cut_frames = random.Random(0), [0, 6.25, 15, 27.5, 42]
    for _ in range(50):
        replay = random.Random()
        replay.setstate(rng.getstate())
        spans = draw_spans(4, replay, (1, 2), (1, 2))  # the spans `build` is about to draw
        assert len(spans) >= 2 and spans[0][1] == 0 and spans[-1][2] == 4
        assert all(
            a[2] == b[1] and a[0] != b[0] for a, b in zip(spans, spans[1:])
        )  # contiguous, alternating
        ids, _ = sequences.build(
            "the dog runs fast", words, {"units": units}, rng, kind="interleaved"
        )
        expected = [vocab.text.bos_id]
        for (
            modality,
            first,
            last,
        ) in spans:  # speech spans hold exactly the frames between their cut points
            if modality == "TEXT":
                expected += [
                    vocab.text_id,
                    *vocab.text.encode(
                        " ".join(w["word"] for w in words[first:last]), bos=False, eos=False
                    ),
                ]
            else:
                frames = [f for f in range(42) if cut_frames[first] <= f < cut_frames[last]]
                expected += [vocab.speech_id, *vocab.speech_ids([("Hu", f) for f in frames])]
        assert ids == expected + [vocab.text.eos_id]
    assert not any(vocab.is_speech(torch.tensor(vocab.text.encode("the dog runs fast"))))


def test_sequence_kinds_follow_the_configured_ratios(vocab):
    words = [{"word": "the", "start": 0.0, "end": 0.2}, {"word": "dog", "start": 0.3, "end": 0.6}]
    streams = {"units": torch.arange(16)}
    for ratios, expected in [
        ({"speech": 1, "text": 1, "interleaved": 1}, (1 / 3, 1 / 3, 1 / 3)),
        ({"speech": 2, "text": 1, "interleaved": 1}, (0.5, 0.25, 0.25)),
    ]:
        sequences = InterleavedSequences(vocab, ratios=ratios)
        rng = random.Random(1)
        kinds = [sequences.build("the dog", words, streams, rng)[1] for _ in range(3000)]
        for kind, share in zip(("speech", "text", "interleaved"), expected):
            assert kinds.count(kind) / len(kinds) == pytest.approx(share, abs=0.03)
    sequences = InterleavedSequences(vocab)  # no word timings: never interleaved, and counted
    kinds = {
        sequences.build("the dog", None, streams, random.Random(2), kind="interleaved")[1]
        for _ in range(20)
    }
    assert (
        kinds <= {"speech", "text"} and sequences.counts["interleaved_without_word_timings"] == 20
    )


def test_paired_sequences_hold_one_utterance_whole_in_both_orders(vocab):
    """ratios with paired alone: every sequence is the utterance's speech then its text, or its text then
    its speech, both orders drawn; a negative or unknown ratio is refused."""
    words = [{"word": "the", "start": 0.0, "end": 0.2}, {"word": "dog", "start": 0.3, "end": 0.6}]
    streams = {"units": torch.arange(16)}
    speech = [vocab.speech_id, *vocab.speech_ids([("Hu", u) for u in range(16)])]
    text = [vocab.text_id, *vocab.text.encode("the dog", bos=False, eos=False)]
    bos, eos = vocab.text.bos_id, vocab.text.eos_id
    ratios = {"speech": 0.0, "text": 0.0, "interleaved": 0.0, "paired": 1.0}
    sequences = InterleavedSequences(vocab, ratios=ratios)
    rng = random.Random(0)
    built = [sequences.build("the dog", words, streams, rng) for _ in range(40)]
    assert {kind for _, kind in built} == {"paired"} and sequences.counts["paired"] == 40
    orders = [ids == [bos, *speech, *text, eos] for ids, _ in built]
    assert all(o or ids == [bos, *text, *speech, eos] for o, (ids, _) in zip(orders, built))
    assert 0 < sum(orders) < 40
    for bad in ({"speech": 1.0, "paired": -1.0}, {"speech": 1.0, "pairs": 1.0}):
        with pytest.raises(ValueError, match="interleave ratios"):
            InterleavedSequences(vocab, ratios=bad)


def make_task(tokenizer, speech_tokenizer, streams=("units", "pitch", "style")) -> SpiritLMTask:
    net = lambda **kw: build_llama_lm(hidden_size=32, num_layers=1, num_heads=2, **kw)  # noqa: E731
    return SpiritLMTask(
        net, tokenizer, speech_tokenizer, optimizer=None, speech_streams=list(streams)
    ).eval()


def other_modality_ids(vocab: InterleavedVocabulary, modality: str) -> list[int]:
    """The tokens of the modality that is not `modality`, its switch included (specials excluded)."""
    if modality == "TEXT":
        return [vocab.speech_id, *range(vocab.first_speech_id, vocab.size)]
    specials = {vocab.text.bos_id, vocab.text.eos_id, vocab.text.pad_id}
    return [vocab.text_id, *(i for i in range(vocab.text_size) if i not in specials)]


@pytest.mark.parametrize("modality", ["TEXT", "SPEECH"])
def test_logit_masking_never_generates_the_other_modality(
    tiny_corpus, speech_tokenizer, waveform, modality, monkeypatch
):
    """An LM biased towards the other modality (+20 on its logits) prefers it at every step; masked
    generation still writes all `max_new_tokens` in `modality`. Without the mask the other modality
    would appear; filtering it out afterwards would leave fewer tokens than asked for."""
    task = make_task(load_or_fit_bpe(tiny_corpus, vocab_size=256), speech_tokenizer)
    vocab, steps = task.vocab, 30
    other = torch.zeros(len(vocab), dtype=torch.bool)
    other[other_modality_ids(vocab, modality)] = True
    task.net.lm_head.register_forward_hook(lambda module, args, logits: logits + 20.0 * other)
    generated = []  # the ids each generate call decoded, before they become text and speech pieces

    def recording(*args, **kwargs):
        generated.append(generate_in_modality(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr("slmlab.tasks.spiritlm.generate_in_modality", recording)
    pieces = [("TEXT", "the dog"), ("SPEECH", waveform)]
    pieces = pieces if modality == "TEXT" else pieces[::-1]  # the prompt ends in the other modality
    prompt = task.prompt_ids(pieces, modality)
    assert prompt[-1] == (vocab.text_id if modality == "TEXT" else vocab.speech_id)
    sampling = dict(do_sample=True, temperature=1.0, top_p=1.0)
    torch.manual_seed(0)
    out = task.generate(pieces, modality, min_new_tokens=steps, max_new_tokens=steps, **sampling)
    new_ids = generated[-1]
    assert len(new_ids) == steps and not other[new_ids].any()
    with torch.no_grad():  # the model's own choice at every generated step is the other modality
        logits = task.net(torch.tensor([prompt + new_ids.tolist()])).logits[0]
    assert other[logits[len(prompt) - 1 : -1].argmax(-1)].all()
    assert {m for m, _ in out["pieces"]} == {modality}
    if modality == "SPEECH":
        assert out["text"] == "" and out["audio"] is not None and out["audio"].abs().sum() > 0
    else:
        assert out["speech_tokens"] == "" and out["audio"] is None and out["text"]
    task.generate(pieces, "ARBITRARY", min_new_tokens=steps, max_new_tokens=steps, **sampling)
    assert other[generated[-1]].all()  # unmasked, the same model writes only the other modality


def test_few_shot_prompts_hold_the_train_examples_then_the_query(
    tiny_corpus, speech_tokenizer, monkeypatch
):
    """The paper's few-shot ASR and TTS prompts, id by id: bos, each train example's
    [SPEECH]units[TEXT]text (TTS: [TEXT]text[SPEECH]units), then the test query and its output's switch;
    without examples, the zero-shot prompt."""
    task = make_task(load_or_fit_bpe(tiny_corpus, vocab_size=256), speech_tokenizer)
    train, _ = read_manifest(tiny_corpus.manifest("train"), check_audio=False)
    test, _ = read_manifest(tiny_corpus.manifest("test"), check_audio=False)
    examples = [(load_audio(r.audio_filepath, 16000), r.text) for r in train[:3]]
    query = load_audio(test[0].audio_filepath, 16000)
    prompts = []

    def recording(net, input_ids, *args, **kwargs):
        prompts.append(input_ids[0].tolist())
        return torch.zeros(0, dtype=torch.long)

    monkeypatch.setattr("slmlab.tasks.spiritlm.generate_in_modality", recording)
    task.transcribe([query], examples=[examples])
    task.synthesise(test[0].text, examples=examples)
    task.transcribe([query])

    def units(wave):
        return task.sequences.speech(speech_tokenizer.encode_streams(wave, task.streams))

    def text(words):
        return task.tokenizer.encode(words, bos=False, eos=False)

    bos, speech, switch_to_text = task.tokenizer.bos_id, task.vocab.speech_id, task.vocab.text_id
    asr = [bos]
    tts = [bos]
    for wave, words in examples:
        asr += [speech, *units(wave), switch_to_text, *text(words)]
        tts += [switch_to_text, *text(words), speech, *units(wave)]
    asr += [speech, *units(query), switch_to_text]
    tts += [switch_to_text, *text(test[0].text), speech]
    assert prompts == [asr, tts, [bos, speech, *units(query), switch_to_text]]
    assert prompts[0].count(speech) == prompts[1].count(switch_to_text) == len(examples) + 1


def test_a_few_shot_answer_ends_where_the_next_example_would_start(
    tiny_corpus, speech_tokenizer, waveform
):
    """An LM that always wants `[SPEECH]` next: prompted few-shot, its transcript ends there (empty);
    zero-shot, `[SPEECH]` stays masked and it writes text up to max_new_tokens."""
    task = make_task(load_or_fit_bpe(tiny_corpus, vocab_size=256), speech_tokenizer)
    bias = torch.zeros(len(task.vocab))
    bias[task.vocab.speech_id] = 50.0
    task.net.lm_head.register_forward_hook(lambda module, args, logits: logits + bias)
    examples = [[(waveform, "the dog runs")]]
    assert task.transcribe([waveform], max_new_tokens=8, examples=examples) == [""]
    assert len(task.transcribe([waveform], max_new_tokens=8)[0]) > 0


def test_a_pretrained_text_lm_continues_with_its_embeddings_resized(
    tiny_corpus, speech_tokenizer, tmp_path
):
    text_tokenizer = load_or_fit_bpe(tiny_corpus, vocab_size=256)
    text_size = len(text_tokenizer)
    pretrained = build_llama_lm(text_size, hidden_size=32, num_layers=1, num_heads=2).eval()
    pretrained.save_pretrained(tmp_path / "llama")
    net = lambda **kw: build_llama_lm(pretrained_path=str(tmp_path / "llama"), **kw)  # noqa: E731
    task = SpiritLMTask(net, text_tokenizer, speech_tokenizer, optimizer=None).eval()
    assert (
        task.net.get_input_embeddings().num_embeddings
        == len(task.vocab)
        == text_size + 2 + speech_tokenizer.n_units
    )
    ids = torch.tensor([text_tokenizer.encode("the dog")])
    with torch.no_grad():  # the text it knew reads exactly as before
        assert torch.allclose(
            task.net(ids).logits[..., :text_size], pretrained(ids).logits, atol=1e-5
        )
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_llama_lm(10, pretrained_path="meta-llama/Llama-2-7b-hf")


def test_hubert_features_load_from_a_tiny_local_checkpoint(tmp_path, waveform):
    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    HubertModel(config).save_pretrained(tmp_path / "hubert")
    tokenizer = fit_speech_tokenizer(
        [waveform, waveform[:20000]],
        features="hubert",
        n_units=8,
        n_styles=2,
        hubert_path=str(tmp_path / "hubert"),
        hubert_layer=2,
    )
    assert tokenizer.unit_centroids.shape == (8, 32)
    units = tokenizer.encode_streams(waveform, ("units",))["units"]
    assert len(units) == len(waveform) // 640 and units.max() < 8
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fit_speech_tokenizer(
            [waveform], features="hubert", hubert_path="facebook/hubert-base-ls960"
        )


def test_the_unit_vocoder_speaks_and_reports_its_resynthesis(speech_tokenizer, tiny_corpus):
    """Eight val utterances through their speech tokens and the unit vocoder come out about as long as they
    went in, in total (the tiny fit's predicted durations are off by 0.3 frames on average, and one of
    these utterances comes out 1.7 times as long)."""
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    real, spoken = 0, 0
    for record in records[:8]:
        wav = load_audio(record.audio_filepath, 16000)
        merged = speech_tokenizer.merge(speech_tokenizer.encode_streams(wav))
        audio = speech_tokenizer.decode(speech_tokenizer.to_string(merged))
        assert audio.abs().max() > 0
        real, spoken = real + len(wav), spoken + len(audio)
    assert abs(spoken - real) < 0.25 * real, (spoken, real)
    report_files = list(
        (tiny_corpus.root / "artifacts" / "unit_vocoder").glob("hu50-dim64-*/resynthesis.json")
    )
    report = json.loads(report_files[0].read_text())["test"]
    assert (
        report["utterances"] == 24
        and 0 <= report["unit_error_rate"] < report["unit_error_rate_silence"]
    )


@pytest.mark.parametrize("mel_per_unit", [4.0, 2.5])  # hops of 160 and 256 samples
def test_unit_to_mel_gives_each_25hz_step_its_own_mel_frames(mel_per_unit):
    """The decoder runs at 25 Hz and each step emits the mel frames of its 40 ms, in time order: changing
    the last unit changes the last steps' frames, and the first half's only through the blocks' GroupNorm
    statistics (the convolutions see 4 units either way), at least ten times less; every utterance gets
    round(steps x mel_per_unit) frames, zero after its end."""
    torch.manual_seed(0)
    model = UnitToMel(8, 2, 2, n_mels=3, dim=16, layers=1, mel_per_unit=mel_per_unit).eval()
    units = torch.arange(20).remainder(8)[None].repeat(2, 1)
    units[1, -1] = (units[1, -1] + 1) % 8
    none, durations = torch.zeros_like(units), torch.ones_like(units)
    lengths = torch.tensor([20, 20])
    with torch.no_grad():
        _, mel, mel_lengths = model(units, none, none, lengths, durations)
        _, short, short_lengths = model(
            units[:, :12], none[:, :12], none[:, :12], torch.tensor([12, 7]), durations[:, :12]
        )
    early = int(10 * mel_per_unit)
    change = (mel[0] - mel[1]).abs()
    assert change[:, -4:].max() > 10 * change[:, :early].max()
    assert mel_lengths.tolist() == [round(20 * mel_per_unit)] * 2
    assert short_lengths.tolist() == [round(12 * mel_per_unit), round(7 * mel_per_unit)]
    assert short[1, :, short_lengths[1] :].abs().sum() == 0


def test_a_hifigan_from_a_local_folder_replaces_griffin_lim(speech_tokenizer, tmp_path, waveform):
    config = SpeechT5HifiGanConfig(
        model_in_dim=80,
        upsample_initial_channel=32,
        upsample_rates=[5, 4, 4, 2],
        upsample_kernel_sizes=[10, 8, 8, 4],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
    )  # upsamples x160: the mel hop
    SpeechT5HifiGan(config).save_pretrained(tmp_path / "hifigan")
    fitted = speech_tokenizer.decoder
    vocoder = UnitVocoder(fitted.model, fitted.mel, vocoder_path=str(tmp_path / "hifigan"))
    tokens = speech_tokenizer.merge(speech_tokenizer.encode_streams(waveform, ("units",)))
    _, durations = dedup(speech_tokenizer.encode_streams(waveform, ("units",))["units"])
    audio = vocoder.synthesise(tokens, durations.tolist())
    assert vocoder.hifigan is not None and len(audio) == 4 * int(durations.sum()) * 160
    with pytest.raises(FileNotFoundError, match="never downloads"):
        UnitVocoder(fitted.model, fitted.mel, vocoder_path="microsoft/speecht5_hifigan")


@pytest.mark.parametrize("model", ["spiritlm_base", "spiritlm_expressive"])
def test_training_on_the_tiny_corpus_lowers_text_and_speech_losses(tiny_corpus, make_cfg, model):
    cfg = make_cfg("experiment=tiny_spiritlm_base", f"model={model}", "model/spiritlm/size=tiny")
    task, before, after = fit_on_tiny_corpus(cfg)
    for name in ("val/text_loss", "val/speech_loss", "val/interleaved_loss"):
        assert after[name] < 0.9 * before[name], (name, before, after)
    expressive = {"val/unit_loss", "val/pitch_loss", "val/style_loss"}
    assert (
        expressive <= set(after) if model == "spiritlm_expressive" else not expressive & set(after)
    )
    assert {"train/text_loss", "train/speech_loss", "train/sequences_interleaved"} <= set(after)


def test_a_tokenizer_the_model_cannot_use_is_refused_by_name(make_cfg):
    cfg = make_cfg("model=spiritlm_base")
    check_speech_tokenizer(cfg, "units_hubert", "spiritlm_base")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "tokenizer/speech=codec_builtin does not fit model=spiritlm_base; "
            "it accepts tokenizer/speech=units_mfcc | units_hubert | units_spiritlm_release"
        ),
    ):
        check_speech_tokenizer(cfg, "codec_builtin", "spiritlm_base")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "accepts tokenizer/speech=codec_builtin | codec_builtin_semantic | codec_mimi"
        ),
    ):
        check_speech_tokenizer(make_cfg("model=csm"), "units_mfcc", "csm")


def llama2_parameters(
    vocab_size: int, hidden: int = 4096, layers: int = 32, ffn: int = 11008
) -> int:
    """Llama-2-7B: untied input and output embeddings, per layer 4 attention projections, 3 SwiGLU
    matrices and 2 RMSNorms, and a final RMSNorm."""
    return (
        2 * vocab_size * hidden
        + layers * (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden)
        + hidden
    )


def test_the_published_scale_preset_is_llama2_7b_with_the_extended_vocabulary(make_cfg):
    assert llama2_parameters(32000) == 6_738_415_616  # Llama-2-7B as published
    cfg = make_cfg("model=spiritlm_expressive", "model/spiritlm/size=7b")
    vocab_size = 32000 + 2 + 500 + 64 + 100  # Llama-2 BPE, [TEXT] [SPEECH], units, pitch, style
    model = instantiate(cfg.model.task.net)(vocab_size=vocab_size)
    assert model.device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == llama2_parameters(vocab_size)


def test_cli_trains_exports_and_generates_speech_from_text(tiny_corpus, data_dir, tmp_path):
    """slmlab-train writes a checkpoint and a pretrained folder; slmlab-generate writes text and a WAV."""
    from conftest import run_cli

    run = tmp_path / "run"
    run_cli(
        "slmlab-train",
        "experiment=tiny_spiritlm_expressive",
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/text_loss", "val/speech_loss", "test/speech_loss"} <= set(metrics["metrics"])
    assert metrics["train_tokens_per_second"] > 0
    assert (run / "pretrained" / "speech_tokenizer.pt").is_file() and (
        run / "pretrained" / "model.safetensors"
    ).is_file()
    out = tmp_path / "generated"
    run_cli(
        "slmlab-generate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "text=the dog",
        "modality=SPEECH",
        "generation.max_new_tokens=60",
        "generation.min_new_tokens=10",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert (out / "output.wav").is_file() and (
        out / "output.speech_tokens.txt"
    ).read_text().startswith("[")

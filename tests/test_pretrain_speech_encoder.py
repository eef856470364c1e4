"""The speech encoder pretrained per corpus (slmlab.pretrain.speech_encoder): a local Parakeet CTC checkpoint
(a FastConformer) that SpeechLM's encoder loader and Spirit LM's units read as they read an external one,
fitted on capped train audio, sharing nothing with the judge."""

from __future__ import annotations

import json

import pytest
import torch

from slmlab.data.manifest import load_audio, read_split
from slmlab.pretrain import speech_encoder

TINY = {  # ParakeetEncoderConfig sizes whose shapes meet the judge's below: [64, 32] FFN weights in both
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_kernel_size": 7,
    "subsampling_conv_channels": 8,
}
JUDGE = {"dim": 32, "layers": 1, "heads": 2, "ffn_dim": 64, "kernel_size": 7}


@pytest.fixture(scope="module")
def fitted(tiny_corpus):
    """(the published folder, the model the fit returned before saving it)."""
    models = []
    fit = speech_encoder.fit_speech_encoder

    def keep(*args, **kwargs):
        models.append(fit(*args, **kwargs))
        return models[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speech_encoder, "fit_speech_encoder", keep)
        folder = speech_encoder.load_or_fit_speech_encoder(tiny_corpus, model=TINY, epochs=0.5)
    return folder, models[0]


@pytest.fixture(scope="module")
def waveform(tiny_corpus) -> torch.Tensor:
    return load_audio(read_split(tiny_corpus, "test")[0][0].audio_filepath, 16000)


def test_the_fitted_encoder_loads_through_the_external_checkpoint_path(fitted, waveform):
    """SpeechLM's `load_audio_encoder` and `build_feature_extractor` read the folder as they read a
    downloaded Parakeet CTC model, and give the hidden states of the model that was fitted."""
    from transformers import ParakeetEncoder, ParakeetFeatureExtractor

    from slmlab.models.pretrained import load_audio_encoder
    from slmlab.tokenizers.frontends import build_feature_extractor, extract_features

    folder, model = fitted
    assert (folder / "model.safetensors").is_file()
    encoder = load_audio_encoder(str(folder)).eval()
    assert type(encoder) is ParakeetEncoder
    extractor = build_feature_extractor(encoder.config, pretrained_path=str(folder))
    assert type(extractor) is ParakeetFeatureExtractor
    features, _ = extract_features(extractor, [waveform], 16000)
    reference = extractor(waveform.numpy(), sampling_rate=16000, return_tensors="pt")
    valid = int(
        reference.attention_mask.sum()
    )  # the extractor's own frames, not its zeroed last one
    assert torch.equal(features[0], reference.input_features[0, :valid].T)
    features = features.transpose(1, 2)  # [1, F, n_mels]
    with torch.no_grad():
        loaded = encoder(features, output_hidden_states=True).hidden_states
        own = model.encoder(features, output_hidden_states=True).hidden_states
    assert len(loaded) == len(own) == TINY["num_hidden_layers"] + 1
    for layer, (a, b) in enumerate(zip(loaded, own)):
        assert torch.equal(a, b), f"layer {layer} differs"


def test_units_hubert_takes_its_units_from_the_fitted_encoder(tiny_corpus, fitted, waveform):
    """`tokenizer/speech=units_hubert` without hubert_path reads the corpus's speech encoder (the one of
    these settings): each 25 Hz unit is the centroid nearest to the chosen layer's 25 Hz state, for the
    log-mel the encoder's own feature extractor makes (its batch call, padding mask and all)."""
    from transformers import ParakeetFeatureExtractor, ParakeetForCTC

    from slmlab.tokenizers.units import assign_nearest, load_or_fit_speech_tokenizer

    folder, _ = fitted
    layer = 1
    tokenizer = load_or_fit_speech_tokenizer(
        tiny_corpus,
        features="hubert",
        n_units=8,
        n_pitch=4,
        n_styles=2,
        dedup=False,
        hubert_layer=layer,
        max_hours=0.01,
        speech_encoder={"model": TINY, "epochs": 0.5},
    )
    assert tokenizer.config["hubert_path"] == str(folder)
    units = tokenizer.encode(waveform)
    inputs = ParakeetFeatureExtractor.from_pretrained(folder)(
        waveform.numpy(), sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        states = ParakeetForCTC.from_pretrained(folder).encoder(**inputs, output_hidden_states=True)
    count = len(waveform) // 640
    frames = states.hidden_states[layer][0][:count]
    frames = torch.cat([frames, frames[-1:].expand(count - len(frames), -1)])  # last repeated
    assert units.tolist() == assign_nearest(frames, tokenizer.unit_centroids).tolist()
    assert len(set(units.tolist())) > 1


def test_the_codec_takes_its_semantic_codebook_from_the_fitted_encoder(tiny_corpus, fitted):
    """`codec_builtin` with semantic={features: hubert} and no hubert_path reads the corpus's speech encoder:
    each 12.5 Hz code of codebook 0 is the centroid nearest to the mean of the chosen layer's two 25 Hz
    states in its 80 ms (the 24 kHz clip heard at 16 kHz, as the encoder hears it)."""
    import torchaudio
    from transformers import ParakeetFeatureExtractor, ParakeetForCTC

    from slmlab.tokenizers.codecs import load_or_fit_builtin_codec
    from slmlab.tokenizers.units import assign_nearest

    folder, _ = fitted
    layer = 1
    codec = load_or_fit_builtin_codec(
        tiny_corpus,
        num_codebooks=3,
        cardinality=8,
        max_hours=0.01,
        semantic={"features": "hubert", "hubert_layer": layer},
        speech_encoder={"model": TINY, "epochs": 0.5},
    )
    assert codec.config["semantic"]["hubert_path"] == str(folder)
    clip = load_audio(read_split(tiny_corpus, "test")[0][0].audio_filepath, 24000)
    clip = clip[: len(clip) // 1920 * 1920 - 960]  # its last 80 ms frame half full: padded
    codes = codec.encode(clip)
    frames = codes.shape[1]
    assert codes.shape == (3, len(clip) // 1920 + 1)
    heard = torchaudio.functional.resample(
        torch.nn.functional.pad(clip, (0, frames * 1920 - len(clip))), 24000, 16000
    )
    inputs = ParakeetFeatureExtractor.from_pretrained(folder)(
        heard.numpy(), sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        states = ParakeetForCTC.from_pretrained(folder).encoder(**inputs, output_hidden_states=True)
    at_25hz = states.hidden_states[layer][0][: 2 * frames]
    at_25hz = torch.cat([at_25hz, at_25hz[-1:].expand(2 * frames - len(at_25hz), -1)])
    expected = assign_nearest(at_25hz.reshape(frames, 2, -1).mean(1), codec.semantic_centroids)
    assert codes[0].tolist() == expected.tolist()
    assert len(set(codes[0].tolist())) > 1


def test_the_judge_shares_nothing_with_the_speech_encoder(tiny_corpus, fitted):
    """Another folder, another seed, no reference to the other's key, and no trained tensor in common."""
    from transformers import ParakeetForCTC

    from slmlab.eval.judge import load_or_fit_judge

    folder, _ = fitted
    judge = load_or_fit_judge(tiny_corpus, model=JUDGE, epochs=1)
    judge_folder = next((tiny_corpus.root / "artifacts" / "judge").glob("ctc-*/judge.pt")).parent
    assert folder.parent.name == "speech_encoder" and judge_folder.parent.name == "judge"
    encoder_record = (folder / "artifact.json").read_text()
    judge_record = (judge_folder / "artifact.json").read_text()
    assert judge_folder.name.split("-")[-1] not in encoder_record
    assert folder.name.split("-")[-1] not in judge_record
    assert (
        json.loads(encoder_record)["settings"]["seed"]
        != json.loads(judge_record)["settings"]["seed"]
    )

    encoder = ParakeetForCTC.from_pretrained(folder).state_dict().values()
    trained = [
        t for t in judge.model.state_dict().values() if t.is_floating_point() and t.numel() > 1
    ]
    shared = [
        tuple(t.shape)
        for t in encoder
        if t.is_floating_point() and t.numel() > 1 and t.unique().numel() > 1  # not a constant init
        for j in trained
        if j.shape == t.shape and torch.equal(j, t)
    ]
    assert not shared
    assert any(t.shape == (64, 32) for t in encoder)  # shapes meet, so a copied weight would show


def test_the_fit_reads_at_most_max_hours_of_train_audio(tiny_corpus):
    max_hours = 0.005  # 18 s: a few of the tiny corpus's utterances
    folder = speech_encoder.load_or_fit_speech_encoder(
        tiny_corpus, model=TINY, epochs=1, batch_size=4, max_hours=max_hours
    )
    record = json.loads((folder / "artifact.json").read_text())
    read, allowed = record["audio_read"], record["fitted_on"]
    assert 0 < read["hours"] <= max_hours
    assert read["utterances"] == allowed["utterances"] < allowed["of_utterances"]
    assert record["val"]["utterances"] == 24  # scored on the whole val split

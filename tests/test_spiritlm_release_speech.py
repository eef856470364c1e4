"""Spirit LM's released speech tokenizer (tokenizers/mhubert.py, tokenizer/speech=units_spiritlm_release):
an mHuBERT in s3prl's converted fairseq layout and the linear unit quantizer, written here by s3prl's own
HuBERT (the one Spirit LM's code copies) at a tiny size, read into transformers with the same features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
from torch import nn

from slmlab.convert import CheckpointMismatchError
from slmlab.data.manifest import load_audio, read_split
from slmlab.tokenizers.mhubert import fill_blanks, read_linear_quantizer, read_mhubert
from slmlab.tokenizers.units import load_or_fit_speech_tokenizer

CONV_25HZ = "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2 + [(16,2,2)]"  # strides multiply to 640


def write_mhubert(path, **model_cfg) -> HubertModel:
    """A tiny s3prl HubertModel with random weights (every parameter perturbed, so none stays at its
    initial value), saved as s3prl's `load_and_convert_fairseq_ckpt` writes a fairseq checkpoint."""
    torch.manual_seed(0)
    settings = {
        "label_rate": 25,
        "encoder_layers": 3,
        "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 4,
        "conv_feature_layers": CONV_25HZ,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "final_dim": 8,
        **model_cfg,
    }
    config, task = HubertConfig(**settings), HubertPretrainingConfig(label_rate=25)
    model = HubertModel(config, task, [list("abcdefghij")]).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    plain = {
        key: getattr(value, "value", value) for key, value in dataclasses.asdict(config).items()
    }
    torch.save(
        {
            "model_cfg": plain,
            "task_cfg": dataclasses.asdict(task),
            "model_weight": model.state_dict(),
            "dictionaries_symbols": [list("abcdefghij")],
        },
        path,
    )
    return model


def write_quantizer(path, vocab_size=6, dim=32, upstream_dim=40, gain=1.0) -> nn.Sequential:
    """The release's `L11_quantizer_500.pt` layout at a tiny size: three linear layers with LeakyReLU,
    widths dim -> dim - mid/4 -> dim - mid/2 -> vocab_size + 1 (mid = upstream_dim - vocab_size - 1)."""
    torch.manual_seed(1)
    mid = upstream_dim - vocab_size - 1
    layers = nn.Sequential(
        nn.Linear(dim, dim - mid // 4),
        nn.LeakyReLU(),
        nn.Linear(dim - mid // 4, dim - mid // 2),
        nn.LeakyReLU(),
        nn.Linear(dim - mid // 2, vocab_size + 1),
    )
    with torch.no_grad():
        layers[0].weight.mul_(gain)  # gain > 1 lets the features, not the biases, pick the unit
    settings = {"vocab_size": vocab_size, "dim": dim, "upstream_dim": upstream_dim}
    torch.save({"model_cfg": settings, "model_weight": layers.state_dict()}, path)
    return layers


def release_fill(code: torch.Tensor, blank: int) -> torch.Tensor:
    """What the release does with blank frames: replace each by its left neighbour (torch.roll, so the
    first frame's is the last), repeated until none is left."""
    code = code.clone()
    for _ in range(len(code)):
        if not (code == blank).any():
            break
        code[code == blank] = torch.roll(code, 1)[code == blank]
    return code


@pytest.mark.parametrize(
    "variant",
    [{}, {"extractor_mode": "layer_norm", "conv_bias": True}],
    ids=["release (group norm, post-norm)", "layer-norm extractor, conv bias"],
)
def test_mhubert_reads_the_converted_layout_with_s3prls_features(tmp_path, variant):
    """Every layer's hidden states equal s3prl's `extract_features(output_layer=L)` (the call Spirit LM's
    tokenizer makes with L=11), at 25 Hz: one frame per 640 samples."""
    reference = write_mhubert(tmp_path / "mhubert.pt", **variant)
    model = read_mhubert(tmp_path / "mhubert.pt")
    wav = torch.randn(1, 16000)
    hidden = model(wav, output_hidden_states=True).hidden_states
    for layer in (1, 2, 3):
        expected, _ = reference.extract_features(
            wav, padding_mask=None, mask=False, output_layer=layer
        )
        assert hidden[layer].shape == expected.shape == (1, 24, 32)
        torch.testing.assert_close(hidden[layer], expected, atol=1e-5, rtol=0)


def test_an_mhubert_that_does_not_fit_is_refused_naming_the_key(tmp_path):
    write_mhubert(tmp_path / "mhubert.pt")
    state = torch.load(tmp_path / "mhubert.pt", weights_only=True)
    state["model_weight"]["encoder.layers.1.fc1.weight"] = torch.zeros(65, 32)
    torch.save(state, tmp_path / "wrong_shape.pt")
    with pytest.raises(
        CheckpointMismatchError, match=r"encoder\.layers\.1\.fc1\.weight.*\(65, 32\)"
    ):
        read_mhubert(tmp_path / "wrong_shape.pt")
    del state["model_weight"]["encoder.layers.1.fc1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(  # a missing key is named as transformers calls it (fc1 is intermediate_dense)
        CheckpointMismatchError,
        match=r"1 keys missing.*layers\.1\.feed_forward\.intermediate_dense",
    ):
        read_mhubert(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "raw_fairseq.pt")
    with pytest.raises(ValueError, match="raw_fairseq.pt: not a converted fairseq HuBERT"):
        read_mhubert(tmp_path / "raw_fairseq.pt")


def test_linear_quantizer_takes_the_argmax_and_fills_blanks_as_the_release_does(tmp_path):
    layers = write_quantizer(tmp_path / "quantizer.pt")
    quantizer = read_linear_quantizer(tmp_path / "quantizer.pt")
    features = 10 * torch.randn(200, 32)  # spread enough that every class, the blank too, is drawn
    raw = layers(features).argmax(-1)
    assert (raw == 6).any() and (raw != 6).any()  # the draw has blank frames to fill
    torch.testing.assert_close(quantizer(features), release_fill(raw, blank=6), atol=0, rtol=0)
    assert fill_blanks(torch.tensor([6, 6, 2, 6, 4, 6]), 6).tolist() == [4, 4, 2, 2, 4, 4]
    assert fill_blanks(torch.tensor([3, 6, 6, 1]), 6).tolist() == [3, 3, 3, 1]
    assert fill_blanks(torch.tensor([6, 6, 6]), 6).tolist() == [
        0,
        0,
        0,
    ]  # the release never ends here


def test_units_spiritlm_release_takes_its_units_from_the_quantizer(tiny_corpus, tmp_path, make_cfg):
    """The speech tokenizer with the release's files: units are the quantizer's on mHuBERT's layer, no
    unit is fitted, and a quantizer whose size is not n_units is refused. The config group composes."""
    reference = write_mhubert(tmp_path / "mhubert.pt")
    layers = write_quantizer(tmp_path / "quantizer.pt", gain=30.0)
    settings = {
        "features": "hubert",
        "hubert_path": str(tmp_path / "mhubert.pt"),
        "hubert_layer": 2,
        "quantizer_path": str(tmp_path / "quantizer.pt"),
        "n_units": 6,
        "n_styles": 4,
        "decoder": None,
    }
    tokenizer = load_or_fit_speech_tokenizer(tiny_corpus, **settings)
    assert tokenizer.n_units == 6 and tokenizer.unit_centroids.numel() == 0
    wav = load_audio(read_split(tiny_corpus, "test")[0][0].audio_filepath, 16000)
    hidden, _ = reference.extract_features(wav[None], padding_mask=None, mask=False, output_layer=2)
    expected = release_fill(layers(hidden[0]).argmax(-1), blank=6).tolist()
    expected += expected[-1:] * (len(wav) // 640 - len(expected))  # the last frame fills to S/640
    units = tokenizer.encode_streams(wav, ("units",))["units"]
    assert units.tolist() == expected and len(set(expected)) >= 2

    with pytest.raises(ValueError, match="quantizer has 6 units, the config says n_units=500"):
        load_or_fit_speech_tokenizer(tiny_corpus, **{**settings, "n_units": 500})

    cfg = make_cfg(
        "model=spiritlm_base",
        "tokenizer/speech=units_spiritlm_release",
        f"tokenizer.speech.hubert_path={tmp_path / 'mhubert.pt'}",
        f"tokenizer.speech.quantizer_path={tmp_path / 'quantizer.pt'}",
    )
    assert cfg.tokenizer.speech.hubert_layer == 11 and cfg.tokenizer.speech.n_units == 500


def test_the_release_code_hifigan_voices_the_units_and_travels_with_the_tokenizer(
    tiny_corpus, tmp_path
):
    """`code_hifigan_path` (the release's hifigan_spiritlm_base/) replaces the fitted unit vocoder: the
    deduplicated units are voiced at the predicted durations. A saved tokenizer (a run folder's
    tokenizers/speech/) holds the mHuBERT, the quantizer and the generator: with the release's files gone,
    it loads and gives the same units and the same waveform, with the same speaker."""
    import shutil

    from test_code_hifigan import BASE, HOP, write_release

    from slmlab.tokenizers.code_hifigan import CodeHiFiGANVocoder
    from slmlab.tokenizers.units import SpeechTokenizer

    write_mhubert(tmp_path / "mhubert.pt")
    write_quantizer(tmp_path / "quantizer.pt", gain=30.0)
    release = write_release(tmp_path / "hifigan_spiritlm_base", BASE, frames_per_unit=2)
    tokenizer = load_or_fit_speech_tokenizer(
        tiny_corpus,
        features="hubert",
        hubert_path=str(tmp_path / "mhubert.pt"),
        hubert_layer=2,
        quantizer_path=str(tmp_path / "quantizer.pt"),
        n_units=6,
        n_styles=4,
        decoder={"epochs": 1},  # not fitted: the release's generator takes its place
        code_hifigan_path=str(release),
        code_hifigan_speaker=1,
    )
    assert isinstance(tokenizer.decoder, CodeHiFiGANVocoder) and tokenizer.decoder.speaker == 1
    wav = load_audio(read_split(tiny_corpus, "test")[0][0].audio_filepath, 16000)
    tokens = tokenizer.merge(tokenizer.encode_streams(wav, ("units",)))
    wave = tokenizer.decode(tokens)
    assert len(wave) == 2 * len(tokens) * HOP
    tokenizer.save(tmp_path / "saved")
    for release_file in ("mhubert.pt", "quantizer.pt"):
        (tmp_path / release_file).unlink()
    shutil.rmtree(release)
    again = SpeechTokenizer.load(tmp_path / "saved")
    assert isinstance(again.decoder, CodeHiFiGANVocoder) and again.decoder.speaker == 1
    assert again.fingerprint() == tokenizer.fingerprint()
    assert again.merge(again.encode_streams(wav, ("units",))) == tokens
    torch.testing.assert_close(again.decode(tokens), wave, atol=0, rtol=0)


def test_the_readmes_release_speech_tokenizer_command_composes():
    """The README's "release's speech tokenizer" command (without its trailing `...`) composes and passes
    slmlab-train's checks, with the release's three files at the paths it names."""
    import shlex
    from pathlib import Path

    from slmlab.runs import check_speech_tokenizer, compose

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("- **The release's speech tokenizer**")[1].split("```")[1].strip()
    assignment, command = block.split("\n", 1)
    folder = assignment.removeprefix("S=")
    argv = shlex.split(command.replace("\\\n", " ").replace("$S", folder))
    assert argv[0].endswith("slmlab-train") and argv[-1] == "..."
    cfg = compose("train", argv[1:-1])
    check_speech_tokenizer(cfg, "units_spiritlm_release", cfg.model.name)
    speech = cfg.tokenizer.speech
    assert speech.hubert_path == f"{folder}/hubert_25hz/mhubert_base_25hz.pt"
    assert speech.quantizer_path == f"{folder}/hubert_25hz/L11_quantizer_500.pt"
    assert speech.code_hifigan_path == f"{folder}/hifigan_spiritlm_base"
    assert (speech.hubert_layer, speech.n_units) == (11, 500)
    assert cfg.model.task.net.pretrained_path == "/models/spirit-lm-base-7b"

"""The released Spirit LM CodeHiFiGAN generators: loading their file layout, synthesis, numerics, saving.

The checkpoints here are tiny ones written in the release's layout from a table of its key names and
shapes (read off facebookresearch/spiritlm's hifigan_vocoder.py for the tiny configs below), not by our
module, so a layout our module merely agrees with itself on would fail."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from slmlab.tokenizers.code_hifigan import CodeHiFiGANVocoder

HIFIGAN = {  # two upsampling stages (x4, x2: 8 samples per frame), 8 -> 4 -> 2 channels
    "upsample_rates": [4, 2],
    "upsample_kernel_sizes": [8, 4],
    "upsample_initial_channel": 8,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "code_hop_size": 8,
    "sampling_rate": 16000,
    "num_embeddings": 10,
    "embedding_dim": 4,
    "dur_predictor_params": {
        "encoder_embed_dim": 4,
        "var_pred_hidden_dim": 6,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
}
BASE = {
    **HIFIGAN,
    "model_in_dim": 12,
    "multispkr": True,
    "num_speakers": 3,
    "multistyle": True,
    "num_styles": 10,
}
EXPRESSIVE = {
    **HIFIGAN,
    "model_in_dim": 16,
    "num_f0_tokens": 6,
    "f0_hop_size": 16,  # 2 unit frames per pitch token
    "num_style_tokens": 5,
    "style_hop_size": 40,  # 5 unit frames per style token
    "multispkr": True,
    "num_speakers": 3,
}
HOP = 8


def release_shapes(config: dict) -> dict[str, tuple]:
    """The release's generator keys and shapes for BASE / EXPRESSIVE, written out by hand."""
    shapes = {
        "conv_pre.bias": (8,),
        "conv_pre.weight_g": (8, 1, 1),
        "conv_pre.weight_v": (8, config["model_in_dim"], 7),
        "ups.0.bias": (4,),
        "ups.0.weight_g": (8, 1, 1),  # ConvTranspose1d weight [in, out, kernel], normed over dim 0
        "ups.0.weight_v": (8, 4, 8),
        "ups.1.bias": (2,),
        "ups.1.weight_g": (4, 1, 1),
        "ups.1.weight_v": (4, 2, 4),
    }
    for block, channels, kernel in [(0, 4, 3), (1, 4, 5), (2, 2, 3), (3, 2, 5)]:
        for convs in ("convs1", "convs2"):
            for j in range(3):
                prefix = f"resblocks.{block}.{convs}.{j}."
                shapes[prefix + "bias"] = (channels,)
                shapes[prefix + "weight_g"] = (channels, 1, 1)
                shapes[prefix + "weight_v"] = (channels, channels, kernel)
    shapes |= {
        "conv_post.bias": (1,),
        "conv_post.weight_g": (1, 1, 1),
        "conv_post.weight_v": (1, 2, 7),
    }
    if config is BASE:
        shapes |= {"dict.weight": (10, 4), "spkr.weight": (3, 4), "style.weight": (10, 4)}
    else:
        shapes |= {
            "dict.weight": (10, 4),
            "f0_dict.weight": (6, 4),
            "style_dict.weight": (5, 4),
            "spkr.weight": (3, 4),
        }
    return shapes | {
        "dur_predictor.conv1.0.weight": (6, 4, 3),
        "dur_predictor.conv1.0.bias": (6,),
        "dur_predictor.ln1.weight": (6,),
        "dur_predictor.ln1.bias": (6,),
        "dur_predictor.conv2.0.weight": (6, 6, 3),
        "dur_predictor.conv2.0.bias": (6,),
        "dur_predictor.ln2.weight": (6,),
        "dur_predictor.ln2.bias": (6,),
        "dur_predictor.proj.weight": (1, 6),
        "dur_predictor.proj.bias": (1,),
    }


def write_release(folder, config: dict, frames_per_unit: int | None = None, edit=None):
    """A release folder (generator.pt = {"generator": state dict}, config.json) with random weights, the
    weight-normed convolutions near unit gain (weight_g ~ 1) and small biases, so that the waveform
    neither saturates tanh nor dies out; `frames_per_unit`: the duration predictor predicts that many
    frames for every unit; `edit(state)`: a last change to the state dict."""
    generator = torch.Generator().manual_seed(3)
    state = {
        k: torch.randn(shape, generator=generator) for k, shape in release_shapes(config).items()
    }
    for key in state:
        if key.endswith("weight_g"):
            state[key] = 1 + 0.2 * state[key]
        elif key.endswith("bias") and not key.startswith("dur_predictor"):
            state[key] = 0.1 * state[key]
    if frames_per_unit is not None:
        state["dur_predictor.proj.weight"] = torch.zeros(1, 6)
        state["dur_predictor.proj.bias"] = torch.tensor([math.log(1 + frames_per_unit)])
    if edit is not None:
        edit(state)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": state, "steps": 1000}, folder / "generator.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# 1. the release layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [BASE, EXPRESSIVE], ids=["base", "expressive"])
def test_release_layout_loads_strictly(tmp_path, config):
    folder = write_release(tmp_path / "release", config)
    written = torch.load(folder / "generator.pt")["generator"]
    for path in (folder, folder / "generator.pt"):
        vocoder = CodeHiFiGANVocoder.load(path)
        state = vocoder.generator.state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == release_shapes(config)
        assert all(torch.equal(state[k], written[k]) for k in written)
        assert vocoder.sample_rate == 16000 and vocoder.source == folder / "generator.pt"


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/generator.pt"):
        CodeHiFiGANVocoder.load(tmp_path / "nowhere" / "generator.pt")
    folder = write_release(tmp_path / "release", BASE)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="release/config.json"):
        CodeHiFiGANVocoder.load(folder)


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda s: s.pop("resblocks.3.convs2.1.weight_g"),
            r"1 keys missing \(first: \['resblocks.3.convs2.1.weight_g'\]\)",
        ),
        (
            lambda s: s.update({"f0_dict.weight": torch.zeros(7, 4)}),
            r"f0_dict.weight has shape \(7, 4\), the model expects \(6, 4\)",
        ),
        (
            lambda s: s.update({"f0.weight": torch.zeros(3)}),
            r"1 keys not in the model \(first: \['f0.weight'\]\)",
        ),
    ],
    ids=["missing", "wrong-shape", "unexpected"],
)
def test_a_state_dict_that_does_not_fit_is_refused_naming_the_key(tmp_path, edit, named):
    folder = write_release(tmp_path / "release", EXPRESSIVE, edit=edit)
    with pytest.raises(ValueError, match=named):
        CodeHiFiGANVocoder.load(folder)


# 2. behaviour -----------------------------------------------------------------------------------------
def test_waveform_length_is_frames_times_hop(tmp_path):
    base = CodeHiFiGANVocoder.load(write_release(tmp_path / "base", BASE))
    tokens = [("Hu", 1), ("Hu", 5), ("Hu", 2)]
    assert len(base.synthesise(tokens, durations=[2, 1, 3])) == 6 * HOP
    frame_level = CodeHiFiGANVocoder.load(tmp_path / "base", dedup=False)
    assert len(frame_level.synthesise(tokens + [("Hu", 2), ("Hu", 2)])) == 5 * HOP
    assert len(base.synthesise([("St", 1), ("Pi", 3)])) == 0
    expressive = CodeHiFiGANVocoder.load(write_release(tmp_path / "expressive", EXPRESSIVE))
    assert len(expressive.synthesise([("St", 1), ("Pi", 3)])) == 0


def test_duration_predictor_expands_deduplicated_units(tmp_path):
    vocoder = CodeHiFiGANVocoder.load(write_release(tmp_path / "release", BASE, frames_per_unit=3))
    tokens = [("Hu", 4), ("Hu", 7), ("Hu", 4), ("Hu", 9)]
    assert vocoder.frames(tokens)["units"].tolist() == [4, 4, 4, 7, 7, 7, 4, 4, 4, 9, 9, 9]
    wave = vocoder.synthesise(tokens)
    assert len(wave) == 4 * 3 * HOP
    assert torch.equal(wave, vocoder.synthesise(tokens, durations=[3, 3, 3, 3]))
    # durations= overrides the predicted ones
    assert len(vocoder.synthesise(tokens, durations=[1, 2, 1, 1])) == 5 * HOP


def test_speaker_and_style_change_the_output_and_the_same_tokens_the_same(tmp_path):
    write_release(tmp_path / "base", BASE)
    tokens = [("Hu", 4), ("Hu", 7), ("Hu", 1)]
    durations = [2, 2, 2]

    def base(**speaker_or_style) -> torch.Tensor:
        vocoder = CodeHiFiGANVocoder.load(tmp_path / "base", **speaker_or_style)
        return vocoder.synthesise(tokens, durations)

    default = base()
    assert torch.equal(default, base()) and torch.equal(default, base(speaker=2, style=8))
    assert not torch.allclose(default, base(speaker=0))
    assert not torch.allclose(default, base(style=3))
    predicted = CodeHiFiGANVocoder.load(
        tmp_path / "base"
    )  # its random duration predictor, dropout off
    assert torch.equal(predicted.synthesise(tokens), predicted.synthesise(tokens))

    expressive = CodeHiFiGANVocoder.load(
        write_release(tmp_path / "expressive", EXPRESSIVE, frames_per_unit=2)
    )
    stream = [("St", 1), ("Hu", 4), ("Pi", 3), ("Hu", 7), ("Hu", 1)]
    reference = expressive.synthesise(stream)
    assert torch.equal(reference, expressive.synthesise(stream))
    for changed in ([("St", 2)] + stream[1:], stream[:2] + [("Pi", 5)] + stream[3:]):
        assert not torch.allclose(reference, expressive.synthesise(changed))


def test_pitch_and_style_tokens_reach_the_unit_frames_as_in_the_release(tmp_path):
    write_release(tmp_path / "expressive", EXPRESSIVE, frames_per_unit=2)
    # frame-level streams (slmlab's merge order: Hu before Pi at equal times): the release's `upsample`
    # repeats each pitch token f0_hop / code_hop = 2 times, each style token 5 times, then pads with the
    # last token or cuts to the 5 unit frames
    frame_level = CodeHiFiGANVocoder.load(tmp_path / "expressive", dedup=False)
    stream = [
        ("St", 1),
        ("Hu", 3),
        ("Pi", 4),
        ("Hu", 5),
        ("Hu", 6),
        ("Pi", 2),
        ("Hu", 7),
        ("Hu", 8),
    ]
    frames = frame_level.frames(stream)
    assert frames["f0"].tolist() == [4, 4, 2, 2, 2]
    assert frames["style_tokens"].tolist() == [1, 1, 1, 1, 1]
    # a deduplicated pitch stream is refused
    with pytest.raises(ValueError, match="1 pitch tokens for 5 units"):
        frame_level.frames([("Pi", 4)] + [("Hu", u) for u in (3, 5, 6, 7, 8)])
    # deduplicated streams (the release's string_to_units): each unit takes the pitch / style last seen
    # before it, units before the first one take the first; all repeated by the predicted 2 frames
    deduplicated = CodeHiFiGANVocoder.load(tmp_path / "expressive")
    stream = [("Hu", 3), ("St", 1), ("Pi", 4), ("Hu", 5), ("Pi", 2), ("St", 0), ("Hu", 6)]
    frames = deduplicated.frames(stream)
    assert frames["units"].tolist() == [3, 3, 5, 5, 6, 6]
    assert frames["f0"].tolist() == [4, 4, 4, 4, 2, 2]
    assert frames["style_tokens"].tolist() == [1, 1, 1, 1, 0, 0]


# 3. numerics against a plain computation from the checkpoint's tensors -------------------------------
def weight(state: dict, prefix: str) -> torch.Tensor:
    """weight_g * weight_v / ||weight_v||, the norm over all but the first dimension."""
    v = state[prefix + "weight_v"]
    return state[prefix + "weight_g"] * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)


def resblock(x: torch.Tensor, state: dict, prefix: str, kernel: int) -> torch.Tensor:
    for j, dilation in enumerate([1, 3, 5]):
        h = F.leaky_relu(x, 0.1)
        h = F.conv1d(
            h,
            weight(state, f"{prefix}convs1.{j}."),
            state[f"{prefix}convs1.{j}.bias"],
            dilation=dilation,
            padding=dilation * (kernel - 1) // 2,
        )
        h = F.leaky_relu(h, 0.1)
        h = F.conv1d(
            h,
            weight(state, f"{prefix}convs2.{j}."),
            state[f"{prefix}convs2.{j}.bias"],
            padding=(kernel - 1) // 2,
        )
        x = x + h
    return x


@pytest.mark.parametrize("config", [BASE, EXPRESSIVE], ids=["base", "expressive"])
def test_generator_equals_a_plain_computation_from_weight_g_and_weight_v(tmp_path, config):
    folder = write_release(tmp_path / "release", config)
    state = torch.load(folder / "generator.pt")["generator"]
    vocoder = CodeHiFiGANVocoder.load(folder, speaker=1, style=4)
    units = [2, 9, 9, 0, 5]
    if config is BASE:  # units, then the speaker and the utterance style repeated over the frames
        tokens = [("Hu", u) for u in units]
        columns = [("dict", units), ("spkr", [1] * 5), ("style", [4] * 5)]
    else:  # units, the pitch and style token current at each, the speaker
        tokens = [
            ("St", 3),
            ("Pi", 1),
            ("Hu", 2),
            ("Hu", 9),
            ("Pi", 5),
            ("Hu", 9),
            ("Hu", 0),
            ("Hu", 5),
        ]
        pitch = [1, 1, 5, 5, 5]
        columns = [("dict", units), ("f0_dict", pitch), ("style_dict", [3] * 5), ("spkr", [1] * 5)]

    x = torch.cat([state[f"{name}.weight"][ids] for name, ids in columns], dim=1).T[None]
    x = F.conv1d(x, weight(state, "conv_pre."), state["conv_pre.bias"], padding=3)
    x = F.conv_transpose1d(
        F.leaky_relu(x, 0.1), weight(state, "ups.0."), state["ups.0.bias"], stride=4, padding=2
    )
    x = (resblock(x, state, "resblocks.0.", 3) + resblock(x, state, "resblocks.1.", 5)) / 2
    x = F.conv_transpose1d(
        F.leaky_relu(x, 0.1), weight(state, "ups.1."), state["ups.1.bias"], stride=2, padding=1
    )
    x = (resblock(x, state, "resblocks.2.", 3) + resblock(x, state, "resblocks.3.", 5)) / 2
    x = torch.tanh(
        F.conv1d(
            F.leaky_relu(x, 0.01), weight(state, "conv_post."), state["conv_post.bias"], padding=3
        )
    )

    wave = vocoder.synthesise(tokens, durations=[1] * 5)
    assert (
        wave.std() > 0.05 and wave.abs().max() < 0.9
    )  # a comparison tanh's saturation cannot hide
    torch.testing.assert_close(wave, x[0, 0], atol=1e-5, rtol=1e-4)


# 4. save -> load ------------------------------------------------------------------------------------
def test_save_load_round_trip_keeps_the_release_layout_and_the_waveform(tmp_path):
    folder = write_release(tmp_path / "release", EXPRESSIVE, frames_per_unit=2)
    vocoder = CodeHiFiGANVocoder.load(folder, speaker=1)
    vocoder.save(tmp_path / "saved")
    saved = torch.load(tmp_path / "saved" / "generator.pt")["generator"]
    written = torch.load(folder / "generator.pt")["generator"]
    assert saved.keys() == written.keys() and all(
        torch.equal(saved[k], written[k]) for k in written
    )
    assert json.loads((tmp_path / "saved" / "config.json").read_text()) == EXPRESSIVE

    stream = [("St", 2), ("Hu", 4), ("Pi", 3), ("Hu", 7), ("Pi", 1), ("Hu", 1)]
    again = CodeHiFiGANVocoder.load(tmp_path / "saved", speaker=1)
    assert torch.equal(vocoder.synthesise(stream), again.synthesise(stream))

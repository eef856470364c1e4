"""SpeechLM checkpoints in and out (issue 14): Ultravox's layout, whole and projector-only, and
transformers' Qwen2-Audio, each compared with the original's logits on the same audio and text.

Ultravox is remote code, not in transformers. Its checkpoints are written here as its
`UltravoxModel.save_pretrained` writes them (fixie-ai/ultravox, ultravox/model/ultravox_model.py and
ultravox_config.py): a config.json whose `audio_config` / `text_config` are the towers' configs (or,
when the towers are frozen, `audio_model_id` / `text_model_id` naming them, the configs left out,
as `UltravoxConfig.to_diff_dict` does), and safetensors under `audio_tower.*` (its
`ModifiedWhisperEncoder`, a `WhisperEncoder` subclass with the same modules),
`multi_modal_projector.*` (`UltravoxProjector`: ln_pre, linear_1, ln_mid or ln_post, linear_2, no
biases) and `language_model.*` (an `AutoModelForCausalLM`), only the trainable ones when towers are
frozen. `ultravox_logits` is its forward with transformers' own classes for the towers.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from slmlab.constants import SAMPLE_RATE
from slmlab.convert import CheckpointMismatchError
from slmlab.convert.speechlm import detect, export_checkpoint, import_checkpoint
from slmlab.models.pretrained import load_or_build_speechlm
from slmlab.models.speechlm import build_speechlm, frame_mask
from slmlab.tokenizers.frontends import extract_features

# max_source_positions 50: Whisper's encoder reads exactly 100 mel frames (1 s), transformers'
# WhisperEncoder and Qwen2AudioEncoder accept no other length
WHISPER = {
    "d_model": 16,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "num_mel_bins": 80,
    "max_source_positions": 50,
}
WHISPER_MODEL = {
    **WHISPER,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
}
LLAMA = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 64,
    "vocab_size": 96,
}
VOCAB, BOS, EOS = 96, 1, 2
STACK, HIDDEN = 3, 24  # Ultravox: stack_factor, hidden_size (linear_1's output; SwiGLU halves it)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Noise of std 0.2 on every weight: the libraries' own inits (std 0.02, norms at 1) give
    near-uniform logits that would hide a wrong key at atol 1e-5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator), alpha=0.2)


def log_mel(seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise waveforms -> our front end's log-mel [B, 80, F] (zero-padded) and lengths [B]."""
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(s * SAMPLE_RATE), generator=generator) for s in seconds]
    return extract_features(WhisperFeatureExtractor(feature_size=80), wavs, SAMPLE_RATE)


def rows(audio_tokens: list[int], placeholder: int, text_len: int = 5) -> dict:
    """Right-padded rows [bos, placeholder x n_i, text]: input_ids and attention_mask [B, L]."""
    generator = torch.Generator().manual_seed(1)
    width = 1 + max(audio_tokens) + text_len
    ids = torch.zeros(len(audio_tokens), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(audio_tokens):
        text = torch.randint(3, VOCAB - 1, (text_len,), generator=generator)
        row = torch.cat([torch.tensor([BOS] + [placeholder] * n), text])
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


def our_logits(model, features, lengths) -> torch.Tensor:
    batch = rows(model.audio_output_lengths(lengths).tolist(), model.config.audio_token_id)
    with torch.no_grad():
        return model(**batch, features=features, feature_lengths=lengths).logits


# -- Ultravox, as its code saves and runs it ----------------------------------------------------------
def write_ultravox(folder, tower, language_model, ln_mid: bool, by_id: dict | None = None) -> None:
    """`UltravoxModel.save_pretrained`: whole, or (by_id: {"audio_model_id": folder, ...}) the
    frozen towers named by their folders and only the projector's weights written."""
    generator = torch.Generator().manual_seed(2)
    audio_in, text_dim = tower.config.d_model * STACK, language_model.config.hidden_size
    projector = {
        "ln_pre.weight": 0.4 + 0.2 * torch.randn(audio_in, generator=generator),  # norm_init 0.4
        "linear_1.weight": 0.2 * torch.randn(HIDDEN, audio_in, generator=generator),
        "linear_2.weight": 0.2 * torch.randn(text_dim, HIDDEN // 2, generator=generator),
    }
    norm = ("ln_mid", HIDDEN // 2) if ln_mid else ("ln_post", text_dim)
    projector[f"{norm[0]}.weight"] = 0.4 + 0.2 * torch.randn(norm[1], generator=generator)
    weights = {f"multi_modal_projector.{k}": t for k, t in projector.items()}
    config = {
        "architectures": ["UltravoxModel"],
        "model_type": "ultravox",
        "hidden_size": HIDDEN,
        "stack_factor": STACK,
        "projector_act": "swiglu",
        "projector_ln_mid": ln_mid,
        "norm_init": 0.4,
        "ignore_index": -100,
        "vocab_size": VOCAB,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "audio_model_id": None,
        "text_model_id": None,
    }
    if by_id:
        config |= by_id
    else:
        config["audio_config"] = {
            **tower.config.to_diff_dict(),
            "_name_or_path": "openai/whisper-tiny",  # a nested config keeps its name
        }
        config["text_config"] = language_model.config.to_diff_dict()
        weights |= {f"audio_tower.{k}": t for k, t in tower.state_dict().items()}
        weights |= {f"language_model.{k}": t for k, t in language_model.state_dict().items()}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def ultravox_logits(folder, features: torch.Tensor) -> torch.Tensor:
    """Ultravox's forward on a checkpoint folder, with transformers' classes for the towers and
    inputs of exactly 100 mel frames each (`ModifiedWhisperEncoder` on full-length audio is
    `WhisperEncoder.forward`): `UltravoxProjector` (frames stacked by stack_factor, the last group
    zero-padded; RMSNorm, linear_1, SwiGLU (silu(second half) x first half), ln_mid, linear_2,
    ln_post; its RMSNorm is LlamaRMSNorm at eps 1e-6), then the audio embeddings written over the
    placeholder tokens (its processor uses eos) from `audio_token_start_idx`."""
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")

    def part(prefix):
        return {k[len(prefix) + 1 :]: t for k, t in weights.items() if k.startswith(prefix + ".")}

    if config["audio_model_id"]:
        tower = WhisperModel.from_pretrained(config["audio_model_id"]).encoder
        language_model = LlamaForCausalLM.from_pretrained(config["text_model_id"])
    else:
        tower = WhisperEncoder(WhisperConfig(**config["audio_config"]))
        tower.load_state_dict(part("audio_tower"))
        language_model = AutoModelForCausalLM.from_config(LlamaConfig(**config["text_config"]))
        language_model.load_state_dict(part("language_model"))
    projector = part("multi_modal_projector")

    def rms_norm(name, x):
        norm = LlamaRMSNorm(x.shape[-1], eps=1e-6)
        norm.weight.data = projector[f"{name}.weight"]
        return norm(x)

    with torch.no_grad():
        states = tower(features).last_hidden_state
        batch, frames, dim = states.shape
        k = config["stack_factor"]
        stacked = F.pad(states, (0, 0, 0, -frames % k)).view(batch, -1, dim * k)
        x, gate = F.linear(rms_norm("ln_pre", stacked), projector["linear_1.weight"]).chunk(2, -1)
        hidden = F.silu(gate) * x
        if config["projector_ln_mid"]:
            hidden = rms_norm("ln_mid", hidden)
        audio = F.linear(hidden, projector["linear_2.weight"])
        if not config["projector_ln_mid"]:
            audio = rms_norm("ln_post", audio)
        n = audio.shape[1]  # ceil(mel frames / (2 x stack_factor)) tokens per utterance
        batch_rows = rows([n] * batch, EOS)
        embeds = language_model.get_input_embeddings()(batch_rows["input_ids"])
        embeds[:, 1 : 1 + n] = audio  # audio_token_start_idx = 1
        return language_model(
            inputs_embeds=embeds, attention_mask=batch_rows["attention_mask"]
        ).logits


def tiny_towers(seed: int) -> tuple[WhisperModel, LlamaForCausalLM]:
    torch.manual_seed(seed)
    whisper, llama = (
        WhisperModel(WhisperConfig(**WHISPER_MODEL)),
        LlamaForCausalLM(LlamaConfig(**LLAMA)),
    )
    randomize(whisper, seed)
    randomize(llama, seed + 1)
    return whisper.eval(), llama.eval()


@pytest.mark.parametrize("ln_mid", [True, False], ids=["ln_mid", "ln_post"])
@pytest.mark.parametrize("layout", ["ultravox", "ultravox_projector"])
def test_ultravox_checkpoint_gives_the_originals_logits(tmp_path, layout, ln_mid):
    whisper, llama = tiny_towers(0)
    by_id = None
    if layout == "ultravox_projector":
        whisper.save_pretrained(tmp_path / "whisper-tiny")
        llama.save_pretrained(tmp_path / "llama")
        by_id = {
            "audio_model_id": str(tmp_path / "whisper-tiny"),
            "text_model_id": str(tmp_path / "llama"),
        }
    write_ultravox(tmp_path / "uv", whisper.encoder, llama, ln_mid, by_id)
    assert detect(tmp_path / "uv") == layout

    model = import_checkpoint(tmp_path / "uv")
    features, lengths = log_mel([1.0, 1.0])
    assert model.config.audio_token_id == VOCAB  # none in Ultravox's config: outside the vocabulary
    torch.testing.assert_close(
        our_logits(model, features, lengths),
        ultravox_logits(tmp_path / "uv", features),
        atol=1e-5,
        rtol=0,
    )


def ultravox_style_model(seed: int, mid_norm: bool = True, lora: dict | None = None, **towers):
    """Ours with Ultravox's projector: SwiGLU, no biases, RMSNorm eps 1e-6; towers from sizes, or
    (towers: encoder=, decoder= {pretrained_path}) from local folders."""
    torch.manual_seed(seed)
    network = {
        "stack_factor": STACK,
        "projector_hidden": HIDDEN // 2,
        "projector_bias": False,
        "projector_norm_eps": 1e-6,
        "projector_mid_norm": mid_norm,
        "lora": lora,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
    }
    if towers:
        model = load_or_build_speechlm(
            VOCAB, VOCAB - 1, towers["encoder"], towers["decoder"], **network
        )
        randomize(model.projector, seed)
        return model.eval()
    model = build_speechlm(
        VOCAB,
        VOCAB - 1,
        {"model_type": "whisper", **WHISPER},
        {"model_type": "llama", **LLAMA},
        **network,
    )
    randomize(model, seed)
    return model.eval()


@pytest.mark.parametrize(
    "mid_norm,lora",
    [(True, None), (False, None), (True, {"r": 2, "target_modules": ["q_proj", "v_proj"]})],
    ids=["ln_mid", "ln_post", "lora"],
)
def test_our_model_exports_to_ultravox_and_reads_back(tmp_path, mid_norm, lora):
    """The export, read by Ultravox's forward on transformers' Whisper and Llama classes, and
    imported back here, gives our logits; LoRA adapters (randomised, so that they count) are
    merged into the exported language model."""
    ours = ultravox_style_model(0, mid_norm, lora)
    features, lengths = log_mel([1.0, 1.0])
    expected = our_logits(ours, features, lengths)
    export_checkpoint(ours, tmp_path / "uv", "ultravox")

    assert detect(tmp_path / "uv") == "ultravox"
    config = json.loads((tmp_path / "uv" / "config.json").read_text())
    assert (config["hidden_size"], config["stack_factor"], config["projector_ln_mid"]) == (
        HIDDEN,
        STACK,
        mid_norm,
    )
    assert (
        "whisper" in config["audio_config"]["_name_or_path"]
    )  # Ultravox's test for its Whisper class
    keys = load_file(tmp_path / "uv" / "model.safetensors").keys()
    assert not any("lora" in k or "ctc" in k for k in keys)
    torch.testing.assert_close(
        ultravox_logits(tmp_path / "uv", features), expected, atol=1e-5, rtol=0
    )
    back = import_checkpoint(tmp_path / "uv")
    assert back.config.audio_token_id == ours.config.audio_token_id
    torch.testing.assert_close(our_logits(back, features, lengths), expected, atol=1e-5, rtol=0)


def test_our_own_folder_round_trip(tmp_path):
    ours = ultravox_style_model(0, lora={"r": 2, "target_modules": ["q_proj"]})
    export_checkpoint(ours, tmp_path / "ours", "slmlab")
    assert detect(tmp_path / "ours") == "slmlab"
    features, lengths = log_mel([1.0, 0.5])
    torch.testing.assert_close(
        our_logits(import_checkpoint(tmp_path / "ours"), features, lengths),
        our_logits(ours, features, lengths),
        atol=0,
        rtol=0,
    )


def test_a_projector_ultravox_cannot_compute_is_refused(tmp_path):
    default = build_speechlm(
        VOCAB, VOCAB - 1, {"model_type": "whisper", **WHISPER}, {"model_type": "llama", **LLAMA}
    )
    with pytest.raises(ValueError, match=r"'projector_bias': True, 'projector_norm_eps': None"):
        export_checkpoint(default, tmp_path / "uv", "ultravox")
    assert not (tmp_path / "uv").exists()


def test_projector_only_round_trip(tmp_path):
    """Frozen towers loaded from local folders: the export holds the projector alone and names the
    folders, as Ultravox saves it; Ultravox's forward and our import give our logits. A trained
    tower, or one built from sizes, cannot be named by a folder and is refused."""
    whisper, llama = tiny_towers(3)
    whisper.save_pretrained(tmp_path / "whisper-tiny")
    llama.save_pretrained(tmp_path / "llama")
    towers = {
        "encoder": {"pretrained_path": str(tmp_path / "whisper-tiny")},
        "decoder": {"pretrained_path": str(tmp_path / "llama")},
    }
    ours = ultravox_style_model(4, **towers)
    features, lengths = log_mel([1.0, 1.0])
    expected = our_logits(ours, features, lengths)
    export_checkpoint(ours, tmp_path / "uv", "ultravox_projector")

    assert detect(tmp_path / "uv") == "ultravox_projector"
    assert detect(tmp_path / "llama") is None and detect(tmp_path) is None
    config = json.loads((tmp_path / "uv" / "config.json").read_text())
    assert config["audio_model_id"] == str(tmp_path / "whisper-tiny")
    assert config["text_model_id"] == str(tmp_path / "llama")
    assert "audio_config" not in config and "text_config" not in config
    keys = set(load_file(tmp_path / "uv" / "model.safetensors"))
    assert keys == {
        f"multi_modal_projector.{n}.weight" for n in ("ln_pre", "linear_1", "ln_mid", "linear_2")
    }
    torch.testing.assert_close(
        ultravox_logits(tmp_path / "uv", features), expected, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        our_logits(import_checkpoint(tmp_path / "uv"), features, lengths),
        expected,
        atol=1e-5,
        rtol=0,
    )

    # a config naming hub ids (as released Ultravox models do) needs their local copies
    config_file = tmp_path / "uv" / "config.json"
    config_file.write_text(json.dumps(config | {"audio_model_id": "openai/whisper-tiny"}))
    with pytest.raises(FileNotFoundError, match="'openai/whisper-tiny' is not a local folder"):
        import_checkpoint(tmp_path / "uv")
    local = import_checkpoint(tmp_path / "uv", audio_model_path=str(tmp_path / "whisper-tiny"))
    torch.testing.assert_close(our_logits(local, features, lengths), expected, atol=1e-5, rtol=0)

    with torch.no_grad():
        ours.encoder.conv1.bias.add_(0.01)  # as if the encoder had been trained
    with pytest.raises(ValueError, match="encoder differs .* at conv1.bias"):
        export_checkpoint(ours, tmp_path / "trained", "ultravox_projector")
    with pytest.raises(ValueError, match="not loaded from a local folder"):
        export_checkpoint(ultravox_style_model(5), tmp_path / "fresh", "ultravox_projector")


# -- Qwen2-Audio --------------------------------------------------------------------------------------
def tiny_qwen2_audio(folder) -> Qwen2AudioForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", **WHISPER},
        text_config={"model_type": "qwen2", **LLAMA, "tie_word_embeddings": True},
        audio_token_index=VOCAB - 1,
    )
    model = Qwen2AudioForConditionalGeneration(config)
    randomize(model, 0)
    model.save_pretrained(folder)
    return model.eval()


def test_qwen2_audio_checkpoint_gives_the_originals_logits(tmp_path):
    """A padded batch (1 s and 0.64 s: even mel-frame counts) with the same log-mel features for
    both: Qwen2-Audio's processor would pad the waveform to 30 s; its encoder takes exactly
    2 x max_source_positions frames, ours the batch's longest."""
    theirs = tiny_qwen2_audio(tmp_path / "q2a")
    assert detect(tmp_path / "q2a") == "qwen2_audio"
    ours = import_checkpoint(tmp_path / "q2a")
    # its tied head is stored once, under language_model.model.embed_tokens
    assert ours.decoder.lm_head.weight is ours.decoder.model.embed_tokens.weight

    features, lengths = log_mel([1.0, 0.64])
    _, pooled = theirs.audio_tower._get_feat_extract_output_lengths(lengths)
    assert ours.audio_output_lengths(lengths).tolist() == pooled.tolist() == [25, 16]
    batch = rows(pooled.tolist(), VOCAB - 1)
    with torch.no_grad():
        expected = theirs(
            **batch,
            input_features=features,
            feature_attention_mask=frame_mask(lengths, features.shape[-1]).long(),
        ).logits
    torch.testing.assert_close(our_logits(ours, features, lengths), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "layout,edit,key,ours",
    [
        (
            "ultravox",
            lambda c: c | {"stack_factor": 2},
            "multi_modal_projector.linear_1.weight",
            "projector.net.1.weight",
        ),
        (
            "qwen2_audio",
            lambda c: c | {"text_config": c["text_config"] | {"vocab_size": 64}},
            "language_model.model.embed_tokens.weight",
            "decoder.model.embed_tokens.weight",
        ),
    ],
)
def test_a_checkpoint_whose_shapes_do_not_fit_is_refused_naming_the_key(
    tmp_path, layout, edit, key, ours
):
    """Named as the file names it, and as ours."""
    if layout == "ultravox":
        whisper, llama = tiny_towers(0)
        write_ultravox(tmp_path / "ckpt", whisper.encoder, llama, ln_mid=True)
    else:
        tiny_qwen2_audio(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    config_file.write_text(json.dumps(edit(json.loads(config_file.read_text()))))
    with pytest.raises(CheckpointMismatchError, match=rf"ckpt: {key} \(ours: {ours}\) has shape"):
        import_checkpoint(tmp_path / "ckpt")


def test_a_runs_export_ships_its_tokenizer(tmp_path):
    """Exported from a run's task, the Ultravox folder holds the run's text tokenizer, which transformers'
    AutoTokenizer reads with `<|audio|>` at the config's audio token index."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from slmlab.tokenizers.prompts import AUDIO_TOKEN
    from slmlab.tokenizers.text import fit_bpe

    tokenizer = fit_bpe(["the dog runs", "a cat sleeps"] * 10, vocab_size=300)
    (audio_token_id,) = tokenizer.add_special_tokens([AUDIO_TOKEN])
    ours = ultravox_style_model(0, True, None)
    ours.config.audio_token_id = audio_token_id
    export_checkpoint(SimpleNamespace(net=ours, tokenizer=tokenizer), tmp_path / "uv", "ultravox")
    config = json.loads((tmp_path / "uv" / "config.json").read_text())
    read = AutoTokenizer.from_pretrained(tmp_path / "uv")
    assert read.convert_tokens_to_ids(AUDIO_TOKEN) == config["audio_token_index"] == audio_token_id
    assert read("the dog runs").input_ids == tokenizer.hf("the dog runs").input_ids

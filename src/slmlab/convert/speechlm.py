"""SpeechLM checkpoints in and out: Ultravox's layout (whole, or its projector alone) and
transformers' Qwen2-Audio (in only), besides our own `save_pretrained` folder.

    ultravox            config.json (model_type "ultravox": audio_config, text_config, stack_factor,
                        hidden_size, projector_act "swiglu", projector_ln_mid, norm_init, ...) and
                        model.safetensors holding audio_tower.*, multi_modal_projector.*,
                        language_model.* (fixie-ai/ultravox, `ultravox/model/ultravox_model.py`)
    ultravox_projector  what Ultravox's `save_pretrained` writes when both towers are frozen: the
                        config names them by audio_model_id / text_model_id (local folders here)
                        and the weights hold multi_modal_projector.* alone
    qwen2_audio         a `Qwen2AudioForConditionalGeneration.save_pretrained` folder (import only)
    slmlab              `SpeechLM.save_pretrained`

Our keys <- theirs:
    encoder.*                          <- audio_tower.*  (Whisper's encoder keys in all three)
    projector.net.{0,1,3,4,5}.weight   <- multi_modal_projector.{ln_pre, linear_1, ln_mid, linear_2,
                                          ln_post}.weight  (Ultravox; ln_mid or ln_post per
                                          projector_ln_mid)
    projector.net.0.*                  <- multi_modal_projector.linear.*  (Qwen2-Audio)
    decoder.*                          <- language_model.*

Ultravox's projector is ours with projector="swiglu", projector_bias=False,
projector_norm_eps=1e-6, projector_hidden = its hidden_size / 2 (the SwiGLU halves linear_1's
output). Qwen2-Audio's is projector="linear", stack_factor=1, after its encoder's 2x average pool
(encoder_pool=2). Ultravox writes no audio token id: it overwrites the embeddings of placeholder
tokens at given positions. Imported without `audio_token_index`, our `audio_token_id` is the
vocabulary size, an id never looked up (audio frames replace it) and never predicted.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, WhisperConfig
from transformers.modeling_utils import no_init_weights
from transformers.models.auto import CONFIG_MAPPING

from slmlab.convert import load_matching
from slmlab.models.pretrained import load_audio_encoder, load_local
from slmlab.models.speechlm import SpeechLM, SpeechLMConfig

FORMATS = ("slmlab", "ultravox", "ultravox_projector")
EXPORT_TAKES_TASK = True
"""`export_checkpoint` takes a run's task: the export ships its text tokenizer (with `<|audio|>`)."""

ULTRAVOX_NORM_EPS = 1e-6  # its RMSNorm is transformers' LlamaRMSNorm at the default eps
ULTRAVOX_NORM_INIT = 0.4  # its projector's RMSNorm weights at initialisation (weights are saved)
ULTRAVOX_PROJECTOR = {  # theirs -> ours, under multi_modal_projector. / projector.
    "ln_pre": "net.0",
    "linear_1": "net.1",
    "ln_mid": "net.3",
    "linear_2": "net.4",
    "ln_post": "net.5",
}
TOWERS = {"audio_tower": "encoder", "language_model": "decoder"}
# the fields of `Qwen2AudioEncoderConfig`: all are WhisperConfig's, for the same modules
QWEN2_AUDIO_ENCODER_FIELDS = (
    "num_mel_bins",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "encoder_layerdrop",
    "d_model",
    "dropout",
    "attention_dropout",
    "activation_function",
    "activation_dropout",
    "scale_embedding",
    "initializer_range",
    "max_source_positions",
)


# -- files --------------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise FileNotFoundError(
        f"{folder}: no model.safetensors or model.safetensors.index.json (only safetensors "
        "checkpoints are read)"
    )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {key: t for file in _weight_files(folder) for key, t in load_file(file).items()}


def _weight_keys(folder: Path) -> list[str]:
    """The tensor names, from the files' headers only."""
    keys = []
    for file in _weight_files(folder):
        with safe_open(file, "pt") as f:
            keys.extend(f.keys())
    return keys


def _read_config(folder: Path) -> dict | None:
    file = folder / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def _write(out_dir: Path, config: dict, weights: dict[str, torch.Tensor]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(
        {k: t.detach().contiguous() for k, t in weights.items()},
        out_dir / "model.safetensors",
        metadata={"format": "pt"},
    )


# -- the interface ------------------------------------------------------------------------------------
def detect(path: str | Path) -> str | None:
    """ "ultravox", "ultravox_projector" (no tower weights), "qwen2_audio", "slmlab", or None."""
    folder = Path(path)
    config = _read_config(folder) if folder.is_dir() else None
    model_type = (config or {}).get("model_type")
    if model_type == "ultravox":
        towers = [k for k in _weight_keys(folder) if k.split(".")[0] in TOWERS]
        return "ultravox" if towers else "ultravox_projector"
    return {"qwen2_audio": "qwen2_audio", SpeechLMConfig.model_type: "slmlab"}.get(model_type)


def import_checkpoint(
    path: str | Path, audio_model_path: str | None = None, text_model_path: str | None = None
) -> SpeechLM:
    """A SpeechLM with the weights of the checkpoint folder at `path` (any format `detect` names).

    audio_model_path / text_model_path: local folders for an Ultravox config's audio_model_id /
    text_model_id, when those name hub models (slmlab never downloads)."""
    folder = Path(path)
    fmt = detect(folder)
    if fmt is None:
        raise ValueError(
            f"{folder}: not a SpeechLM checkpoint (expected a config.json with model_type "
            f"ultravox, qwen2_audio or {SpeechLMConfig.model_type})"
        )
    if fmt == "qwen2_audio":
        return _import_qwen2_audio(folder)
    if fmt == "slmlab":
        model = _unfilled(SpeechLMConfig.from_pretrained(folder))
        _load(model, _read_weights(folder), folder)
        return model.eval()
    return _import_ultravox(folder, audio_model_path, text_model_path)


def export_checkpoint(model, out_dir: str | Path, fmt: str) -> None:
    """Write `model` (a SpeechLM, or a run's SpeechLMTask: its network, and its text tokenizer saved
    beside it with `save_pretrained`, `<|audio|>` at the config's audio token id) to `out_dir` in `fmt`
    (one of FORMATS).

    ultravox: everything, the towers' configs inline. ultravox_projector: the projector alone, the
    config naming the local folders the encoder and decoder were loaded from; refused unless both
    still equal those folders' weights (a trained tower must go whole). LoRA adapters are merged
    into the exported decoder; the CTC head, a training aid, is not exported."""
    out_dir = Path(out_dir)
    tokenizer = getattr(model, "tokenizer", None)
    model = getattr(model, "net", model)
    if fmt == "slmlab":
        model.save_pretrained(out_dir)
    elif fmt in ("ultravox", "ultravox_projector"):
        _export_ultravox(model, out_dir, projector_only=fmt == "ultravox_projector")
    else:
        raise ValueError(f"cannot export a SpeechLM to {fmt!r}; choose one of {FORMATS}")
    if tokenizer is not None:
        tokenizer.save(out_dir)


# -- shared -------------------------------------------------------------------------------------------
def _renamed(weights: dict[str, torch.Tensor], prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Keys starting with a prefix of `prefixes` get its replacement; others are kept (and then
    refused by `load_matching` as not in the model)."""
    out = {}
    for key, tensor in weights.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        out[key if old is None else prefixes[old] + key[len(old) :]] = tensor
    return out


def _unfilled(
    config: SpeechLMConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None
) -> SpeechLM:
    """A SpeechLM whose weights are about to be loaded: no random initialisation (minutes for a
    7B decoder), a tied head tied as transformers' `from_pretrained` ties it."""
    with no_init_weights():
        model = SpeechLM(config, encoder=encoder, decoder=decoder)
    model.tie_weights()
    return model


def _load(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: Path,
    prefixes: dict[str, str] | None = None,
) -> None:
    """`load_matching`, after giving each tied parameter that the file stores under one name only
    (transformers saves a tied LM head once) its other names. prefixes: the renaming `_renamed` applied
    (theirs -> ours), so that a refusal names the key as the file has it."""
    ours_to_theirs = {ours: theirs for theirs, ours in (prefixes or {}).items()}

    def file_name(key: str) -> str:
        ours = next((p for p in ours_to_theirs if key.startswith(p)), None)
        return key if ours is None else ours_to_theirs[ours] + key[len(ours) :]

    names_of: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(tensor), []).append(name)
    for names in names_of.values():
        stored = [n for n in names if n in state]
        for name in names:
            if stored and name not in state:
                state[name] = state[stored[0]]
    load_matching(model, state, str(source), file_name)


def _config_from_dict(config: dict, default_type: str) -> PretrainedConfig:
    config = dict(config)
    return CONFIG_MAPPING[config.pop("model_type", default_type)](**config)


def _plain_decoder(model: SpeechLM) -> nn.Module:
    """The decoder as a plain transformers model: LoRA adapters merged into a copy."""
    if model.config.lora:
        return copy.deepcopy(model.decoder).merge_and_unload()
    return model.decoder


# -- Qwen2-Audio --------------------------------------------------------------------------------------
def _import_qwen2_audio(folder: Path) -> SpeechLM:
    """Qwen2-Audio: Whisper's encoder + a 2x average pool before its last LayerNorm, one Linear,
    Qwen2. Its own forward needs inputs padded to 30 s of log-mel; ours reads any length and keeps
    the padding out of every frame (an utterance of an odd number of mel frames differs at its last
    frame: Qwen2-Audio's convolution reads the padding there)."""
    theirs = load_local(AutoConfig, str(folder))
    audio = theirs.audio_config
    config = SpeechLMConfig(
        audio_config=WhisperConfig(**{f: getattr(audio, f) for f in QWEN2_AUDIO_ENCODER_FIELDS}),
        text_config=theirs.text_config,
        stack_factor=1,
        projector="linear",
        audio_token_id=theirs.audio_token_index,
        encoder_pool=2,
    )
    model = _unfilled(config)
    prefixes = {
        "audio_tower.": "encoder.",
        "multi_modal_projector.linear.": "projector.net.0.",
        "language_model.": "decoder.",
    }
    _load(model, _renamed(_read_weights(folder), prefixes), folder, prefixes)
    return model.eval()


# -- Ultravox -----------------------------------------------------------------------------------------
def _local_tower(model_id: str | None, override: str | None, key: str, folder: Path) -> str | None:
    path = override or model_id
    if path is not None and not Path(path).is_dir():
        raise FileNotFoundError(
            f"{folder / 'config.json'}: {key} {model_id!r} is not a local folder (slmlab never "
            f"downloads); pass its local copy as {key.replace('_id', '_path')}="
        )
    return path


def _import_ultravox(
    folder: Path, audio_model_path: str | None, text_model_path: str | None
) -> SpeechLM:
    """Ultravox's `UltravoxModel.from_pretrained`: each tower from its model id when the config
    names one (else built from the config inline), then every weight in the file over it."""
    config = _read_config(folder)
    source = folder / "config.json"
    if config.get("llm_only_training"):
        raise ValueError(f"{source}: llm_only_training has no audio tower to import")
    if config.get("projector_act", "swiglu") != "swiglu":
        raise ValueError(
            f"{source}: projector_act {config['projector_act']!r}; only Ultravox's SwiGLU "
            "projector has an equivalent here"
        )
    audio_path = _local_tower(
        config.get("audio_model_id"), audio_model_path, "audio_model_id", folder
    )
    text_path = _local_tower(config.get("text_model_id"), text_model_path, "text_model_id", folder)
    encoder = load_audio_encoder(audio_path) if audio_path else None
    decoder = load_local(AutoModelForCausalLM, text_path) if text_path else None
    audio_config = (
        encoder.config if encoder else _config_from_dict(config["audio_config"], "whisper")
    )
    text_config = decoder.config if decoder else _config_from_dict(config["text_config"], "llama")
    speechlm_config = SpeechLMConfig(
        audio_config=audio_config,
        text_config=text_config,
        stack_factor=config.get("stack_factor", 8),
        projector="swiglu",
        projector_hidden=config.get("hidden_size", 4096) // 2,
        audio_token_id=config.get("audio_token_index") or text_config.vocab_size,
        projector_bias=False,
        projector_norm_eps=ULTRAVOX_NORM_EPS,
        projector_mid_norm=config.get("projector_ln_mid", False),
    )
    model = _unfilled(speechlm_config, encoder, decoder)
    from_folders = tuple(
        f"{ours}." for ours, loaded in (("encoder", encoder), ("decoder", decoder)) if loaded
    )
    state = {k: t for k, t in model.state_dict().items() if k.startswith(from_folders)}
    prefixes = {f"{theirs}.": f"{ours}." for theirs, ours in TOWERS.items()}
    prefixes |= {
        f"multi_modal_projector.{theirs}.": f"projector.{ours}."
        for theirs, ours in ULTRAVOX_PROJECTOR.items()
    }
    state |= _renamed(_read_weights(folder), prefixes)
    _load(model, state, folder, prefixes)
    return model.eval()


def _check_ultravox_projector(config: SpeechLMConfig) -> None:
    """Refuse a projector Ultravox's cannot compute exactly, naming each setting that differs."""
    wanted = {
        "projector": "swiglu",
        "projector_bias": False,
        "projector_norm_eps": ULTRAVOX_NORM_EPS,
        "encoder_pool": 1,
        "compressor": "stack",
    }
    wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(
            f"Ultravox's projector cannot express this model: {wrong} (Ultravox: "
            f"{ {k: wanted[k] for k in wrong} }); train with those settings to export to Ultravox"
        )


def _tower_folder(module: nn.Module, part: str) -> str:
    """The local folder `module` was loaded from (`from_pretrained` records it in its config)."""
    path = module.config.name_or_path
    if not path or not Path(path).is_dir():
        raise ValueError(
            f"the {part} was not loaded from a local folder (name_or_path {path!r}), so a "
            "projector-only checkpoint cannot name it; export whole (ultravox)"
        )
    return path


def _first_difference(ours: nn.Module, reference: nn.Module) -> str | None:
    """The first state-dict key whose tensor differs between the two (or that one lacks)."""
    a, b = ours.state_dict(), reference.state_dict()
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b or a[key].shape != b[key].shape:
            return key
        if not torch.equal(a[key], b[key].to(a[key].dtype)):
            return key
    return None


def _export_ultravox(model: SpeechLM, out_dir: Path, projector_only: bool) -> None:
    _check_ultravox_projector(model.config)
    audio_config, text_config = model.config.audio_config, model.config.text_config
    decoder = _plain_decoder(model)
    hidden = model.projector.net[4].in_features
    config = {
        "architectures": ["UltravoxModel"],
        "model_type": "ultravox",
        "audio_model_id": None,
        "text_model_id": None,
        "audio_token_index": model.config.audio_token_id,
        "hidden_size": 2 * hidden,
        "stack_factor": model.config.stack_factor,
        "projector_act": "swiglu",
        "projector_ln_mid": model.config.projector_mid_norm,
        "norm_init": ULTRAVOX_NORM_INIT,
        "ignore_index": -100,
        "vocab_size": text_config.vocab_size,
        "initializer_range": text_config.initializer_range,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
    }
    projector = {
        f"multi_modal_projector.{theirs}.weight": model.projector.get_parameter(f"{ours}.weight")
        for theirs, ours in ULTRAVOX_PROJECTOR.items()
        if isinstance(model.projector.get_submodule(ours), nn.RMSNorm | nn.Linear)
    }
    if projector_only:
        towers = {
            "audio_model_id": ("encoder", model.encoder, load_audio_encoder),
            "text_model_id": ("decoder", decoder, lambda p: load_local(AutoModelForCausalLM, p)),
        }
        for key, (part, module, load) in towers.items():
            path = _tower_folder(module, part)
            if (
                part == "encoder"
                and audio_config.model_type == "whisper"
                and ("whisper" not in path.lower())
            ):
                raise ValueError(
                    f"Ultravox reads a Whisper tower with its own encoder class only when "
                    f"'whisper' is in audio_model_id, and {path} lacks it: rename the folder or "
                    "export whole (ultravox)"
                )
            differs = _first_difference(module, load(path))
            if differs is not None:
                raise ValueError(
                    f"the {part} differs from {path} at {differs}: it was trained, so it must "
                    "be exported whole (ultravox), not named by its folder"
                )
            config[key] = path
        _write(out_dir, config, projector)
        return
    name = audio_config.name_or_path
    if audio_config.model_type == "whisper" and "whisper" not in name.lower():
        name = "whisper"  # Ultravox builds its own Whisper encoder class only for such a name
    config["audio_config"] = {
        **audio_config.to_diff_dict(),
        "model_type": audio_config.model_type,
        "_name_or_path": name,
    }
    config["text_config"] = {**text_config.to_diff_dict(), "model_type": text_config.model_type}
    weights = {f"audio_tower.{k}": t for k, t in model.encoder.state_dict().items()}
    weights |= projector
    # a tied head is stored once, under its first name, as transformers does
    stored: set[int] = set()
    for key, tensor in decoder.state_dict(keep_vars=True).items():
        if id(tensor) not in stored:
            stored.add(id(tensor))
            weights[f"language_model.{key}"] = tensor
    _write(out_dir, config, weights)

"""CSM checkpoints in and out: Sesame's release (SesameAILabs/csm) and transformers' `CsmForConditionalGeneration`.

- **sesame**: a folder with `config.json` (the model arguments its `PyTorchModelHubMixin` saves: backbone_flavor,
  decoder_flavor, text_vocab_size, audio_vocab_size, audio_num_codebooks) and `model.safetensors`; or the older
  single `ckpt.pt` state dict, which came without a config (Sesame's first `generator.py` built CSM-1B for it).
  Its module names are ours, so its state dict loads as it is; a flavor names the sizes of a torchtune Llama-3.2
  (`FLAVORS`: `llama-1B` and `llama-100M` are `model/csm/size=1b`'s backbone and decoder). Sizes of no flavor are
  written under a `flavors` key of `config.json`, which Sesame's loader ignores.
- **transformers**: a `save_pretrained` folder (`config.json` with `"model_type": "csm"`, `*.safetensors`):

      ours (= Sesame)                  transformers
      backbone.layers.N.attn.q_proj    backbone_model.layers.N.self_attn.q_proj   (q, k: rows permuted, below)
      decoder.layers.N.mlp.w1          depth_decoder.model.layers.N.mlp.gate_proj (w2: down_proj, w3: up_proj)
      *.sa_norm / mlp_norm / norm      *.input_layernorm / post_attention_layernorm / norm
      text_embeddings                  embed_text_tokens
      audio_embeddings [K*V, D]        backbone_model.embed_tokens.embed_audio_tokens, and again as
                                       depth_decoder.model.embed_tokens (codebook k at rows k*V.., in both)
      projection                       depth_decoder.model.inputs_embeds_projector
      codebook0_head                   lm_head
      audio_head [K-1, D_dec, V]       depth_decoder.codebooks_head.weight
      RoPE scaling: scale_factor,      rope_scaling (llama3): factor, low_freq_factor, high_freq_factor,
      high_freq_factor, old_context_len  original_max_position_embeddings (the same frequencies)

  torchtune's RoPE rotates the pairs (2i, 2i+1) of each head, transformers' the pairs (i, i + head_dim/2): the q and
  k rows of every head are permuted between the two. The Mimi codec's weights (`codec_model.*`) are not part of
  our CSM (the codec is the run's speech tokenizer): they are skipped on import and not written on export.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slmlab.convert import CheckpointMismatchError, load_matching
from slmlab.models.csm import CSM, llama3_2_transformer

log = logging.getLogger(__name__)

FORMATS = ("sesame", "transformers")

# Sesame's models.py: llama3_2 with rope_base 500,000, scale_factor 32, norm_eps 1e-5 (our defaults)
FLAVORS = {
    "llama-1B": dict(
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=2048,
        intermediate_dim=8192,
        max_seq_len=2048,
    ),
    "llama-100M": dict(
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        embed_dim=1024,
        intermediate_dim=8192,
        max_seq_len=2048,
    ),
}
# the arguments Sesame's first generator.py gave a ckpt.pt (CSM-1B)
CSM_1B_ARGS = dict(
    backbone_flavor="llama-1B",
    decoder_flavor="llama-100M",
    text_vocab_size=128_256,
    audio_vocab_size=2051,
    audio_num_codebooks=32,
)
SESAME_ARGS = tuple(CSM_1B_ARGS)
# what shapes do not show: a checkpoint loaded into a model of other settings computes something else
ARCHITECTURE = (
    "num_heads",
    "num_kv_heads",
    "rope_base",
    "norm_eps",
    "scale_factor",
    "high_freq_factor",
    "old_context_len",
)

STACKS = {"backbone": "backbone_model", "decoder": "depth_decoder.model"}
LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "sa_norm.scale": "input_layernorm.weight",
    "mlp_norm.scale": "post_attention_layernorm.weight",
}
OTHER_NAMES = {
    "backbone.norm.scale": "backbone_model.norm.weight",
    "decoder.norm.scale": "depth_decoder.model.norm.weight",
    "text_embeddings.weight": "embed_text_tokens.weight",
    "audio_embeddings.weight": "backbone_model.embed_tokens.embed_audio_tokens.weight",
    "projection.weight": "depth_decoder.model.inputs_embeds_projector.weight",
    "codebook0_head.weight": "lm_head.weight",
    "audio_head": "depth_decoder.codebooks_head.weight",
}
# transformers' second copy of the audio embeddings (tied to the backbone's)
DEPTH_EMBEDDINGS = "depth_decoder.model.embed_tokens.weight"
HF_LAYER_NAMES = {v: k for k, v in LAYER_NAMES.items()}
HF_OTHER_NAMES = {v: k for k, v in OTHER_NAMES.items()}
HF_STACKS = {v: k for k, v in STACKS.items()}


def full_sizes(sizes: dict) -> dict:
    """`llama3_2_transformer`'s arguments with its defaults filled in."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(llama3_2_transformer).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**sizes, **{k: v for k, v in defaults.items() if k not in sizes}}


def sizes_of(model: CSM) -> dict:
    """`build_csm`'s size arguments, read off a built model (any device, meta included)."""

    def transformer(net) -> dict:
        layer = net.layers[0]
        rope = layer.attn.pos_embeddings
        return dict(
            num_layers=len(net.layers),
            num_heads=layer.attn.num_heads,
            num_kv_heads=layer.attn.num_kv_heads,
            embed_dim=layer.attn.embed_dim,
            intermediate_dim=layer.mlp.w1.out_features,
            max_seq_len=net.max_seq_len,
            rope_base=rope.base,
            norm_eps=net.norm.eps,
            scale_factor=rope.scale_factor,
            high_freq_factor=rope.high_freq_factor,
            old_context_len=rope.old_context_len,
        )

    return dict(
        text_vocab_size=model.text_embeddings.num_embeddings,
        cardinality=model.cardinality,
        num_codebooks=model.num_codebooks,
        backbone=transformer(model.backbone),
        decoder=transformer(model.decoder),
    )


# -- detection and import ------------------------------------------------------------------------------------
def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not JSON ({error})") from None


def detect(path: str | Path) -> str | None:
    """The format of the CSM checkpoint at `path` ("sesame" or "transformers"), None when it holds none."""
    path = Path(path)
    if path.is_file():
        return "sesame" if path.suffix == ".pt" and _is_sesame_state(path) else None
    config = path / "config.json"
    if config.is_file():
        args = _read_json(config)
        if args.get("model_type") == "csm":
            return "transformers"
        if "backbone_flavor" in args:
            return "sesame"
    return "sesame" if (path / "ckpt.pt").is_file() else None


def _is_sesame_state(file: Path) -> bool:
    """Whether a .pt file is a state dict with Sesame's heads (it may be another arm's, or no torch file)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError):
        return False
    return isinstance(state, dict) and "codebook0_head.weight" in state


def _torch_state(file: Path) -> dict:
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: not a state dict (a mapping of names to tensors)")
    return state


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], str]:
    """-> (sizes: `build_csm`'s size arguments, state: in our key names, source: the weights' file)."""
    path = Path(path)
    fmt = detect(path)
    if fmt == "sesame":
        return _read_sesame(path)
    if fmt == "transformers":
        return _read_transformers(path)
    raise ValueError(
        f"{path}: not a CSM checkpoint (expected Sesame's config.json + model.safetensors or ckpt.pt, or a "
        "transformers CsmForConditionalGeneration folder)"
    )


def import_checkpoint(path: str | Path) -> tuple[CSM, dict]:
    """A Sesame or transformers CSM checkpoint -> (our `CSM` with its weights, its `build_csm` size arguments)."""
    sizes, state, source = read_checkpoint(path)
    model = CSM(**sizes)
    load_matching(model, state, source, _file_name(path))
    return model, sizes


def load_pretrained(model: CSM, path: str | Path) -> None:
    """Every weight of `model` from the CSM checkpoint at `path`, whose sizes must be the model's: shapes are
    checked by `load_matching`, the settings shapes do not show (heads, RoPE, norm eps) here."""
    sizes, state, source = read_checkpoint(path)
    ours = sizes_of(model)
    for part in ("backbone", "decoder"):
        theirs = sizes[part]
        for key in ARCHITECTURE:
            if not math.isclose(theirs[key], ours[part][key]):
                raise CheckpointMismatchError(
                    f"{source}: {part}.{key} is {theirs[key]} in the checkpoint, {ours[part][key]} in the model "
                    "(is the size preset the checkpoint's?)"
                )
    load_matching(model, state, source, _file_name(path))


def _file_name(path: str | Path):
    """Our key -> its name in the checkpoint at `path` (transformers renames every key; Sesame's are ours)."""
    if detect(Path(path)) != "transformers":
        return None

    def name(key: str) -> str:
        try:
            return _hf_name(key)
        except (AttributeError, KeyError):  # not a key of ours: kept as it was read
            return key

    return name


def _read_sesame(path: Path) -> tuple[dict, dict, str]:
    folder = path.parent if path.is_file() else path
    if path.is_dir() and (path / "model.safetensors").is_file():
        weights = path / "model.safetensors"
        state = load_file(str(weights))
    else:
        weights = path if path.is_file() else path / "ckpt.pt"
        state = _torch_state(weights)
    config = folder / "config.json"
    args = _read_json(config) if config.is_file() else None
    if args is None or "backbone_flavor" not in args:
        log.info("%s: no Sesame config.json beside it, read as CSM-1B (%s)", weights, CSM_1B_ARGS)
        args = CSM_1B_ARGS
    return _sesame_sizes(args, config), state, str(weights)


def _sesame_sizes(args: dict, config: Path) -> dict:
    missing = [name for name in SESAME_ARGS if name not in args]
    if missing:
        raise ValueError(f"{config}: no {missing} (Sesame's model arguments: {list(SESAME_ARGS)})")
    flavors = {**FLAVORS, **args.get("flavors", {})}
    for name in (args["backbone_flavor"], args["decoder_flavor"]):
        if name not in flavors:
            raise ValueError(
                f"{config}: flavor {name!r} is none of {sorted(flavors)}; give its sizes under "
                '"flavors": {"' + name + '": {"num_layers": ..., "num_heads": ...}} in that file'
            )
    return dict(
        text_vocab_size=args["text_vocab_size"],
        cardinality=args["audio_vocab_size"],
        num_codebooks=args["audio_num_codebooks"],
        backbone=full_sizes(flavors[args["backbone_flavor"]]),
        decoder=full_sizes(flavors[args["decoder_flavor"]]),
    )


def _read_transformers(folder: Path) -> tuple[dict, dict, str]:
    from transformers import CsmConfig

    config = CsmConfig.from_pretrained(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors beside its config.json")
    hf_state = {}
    for file in files:
        hf_state.update(load_file(str(file)))
    sizes = dict(
        text_vocab_size=config.text_vocab_size,
        cardinality=config.vocab_size,
        num_codebooks=config.num_codebooks,
        backbone=_sizes_from_hf(config, folder),
        decoder=_sizes_from_hf(config.depth_decoder_config, folder),
    )
    return sizes, _state_from_hf(hf_state, sizes, config, files[0]), str(files[0])


# -- transformers' layout ------------------------------------------------------------------------------------
def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _sizes_from_hf(config, folder: Path) -> dict:
    """A `CsmConfig` or its `CsmDepthDecoderConfig` -> `llama3_2_transformer`'s sizes."""
    unsupported = {
        "head_dim": config.head_dim != config.hidden_size // config.num_attention_heads,
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": config.hidden_act != "silu",
    }
    rope = config.rope_scaling or {"rope_type": "default"}
    kind = rope.get("rope_type", rope.get("type"))
    if kind not in ("default", "llama3") or any(unsupported.values()):
        raise ValueError(
            f"{folder}/config.json: {type(config).__name__} sets {[k for k, v in unsupported.items() if v]} "
            f"rope_type={kind!r}; torchtune's Llama-3.2 has head_dim = hidden_size / heads, no biases, silu, and "
            "llama3 or plain RoPE"
        )
    sizes = full_sizes(
        dict(
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            embed_dim=config.hidden_size,
            intermediate_dim=config.intermediate_size,
            max_seq_len=config.max_position_embeddings,
            rope_base=_number(config.rope_theta),
            norm_eps=config.rms_norm_eps,
        )
    )
    if kind == "default":
        sizes["scale_factor"] = 1  # llama3 scaling by 1 leaves every frequency as it is
    else:  # the same frequencies with low_freq_factor 1 (only old/low and old/high enter them)
        low = rope["low_freq_factor"]
        sizes.update(
            scale_factor=_number(rope["factor"]),
            high_freq_factor=_number(rope["high_freq_factor"] / low),
            old_context_len=_number(rope["original_max_position_embeddings"] / low),
        )
    return sizes


def _hf_rope(sizes: dict) -> dict:
    """Our RoPE scaling as transformers' llama3 `rope_scaling`. transformers warns unless
    original_max_position_embeddings < max_position_embeddings; halving it with both factors keeps every
    frequency (its own conversion script writes CSM-1B's so)."""
    old, low, high = sizes["old_context_len"], 1.0, float(sizes["high_freq_factor"])
    while old >= sizes["max_seq_len"] and old % 2 == 0:
        old, low, high = old // 2, low / 2, high / 2
    return {
        "rope_type": "llama3",
        "factor": float(sizes["scale_factor"]),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": _number(old),
    }


def _rope_rows(weight: torch.Tensor, head_dim: int, to_hf: bool) -> torch.Tensor:
    """q or k [heads * head_dim, D]: torchtune's (2i, 2i+1) pairs -> transformers' (i, i + head_dim/2), or back.
    (torchtune's `tune_to_hf` does the same, but fails on a shape that does not fit; this leaves such a weight
    to `load_matching`, which names it.)"""
    if weight.shape[0] % head_dim:
        return weight
    pairs = (head_dim // 2, 2) if to_hf else (2, head_dim // 2)
    return weight.unflatten(0, (-1, *pairs)).transpose(1, 2).flatten(0, 2)


def _hf_name(key: str) -> str:
    if key in OTHER_NAMES:
        return OTHER_NAMES[key]
    stack, layer, name = re.fullmatch(r"(backbone|decoder)\.layers\.(\d+)\.(.+)", key).groups()
    return f"{STACKS[stack]}.layers.{layer}.{LAYER_NAMES[name]}"


def _our_name(key: str) -> str:
    """A transformers key -> ours; a key of neither layout is kept, for `load_matching` to name."""
    if key in HF_OTHER_NAMES:
        return HF_OTHER_NAMES[key]
    match = re.fullmatch(r"(backbone_model|depth_decoder\.model)\.layers\.(\d+)\.(.+)", key)
    if match is None or match[3] not in HF_LAYER_NAMES:
        return key
    return f"{HF_STACKS[match[1]]}.layers.{match[2]}.{HF_LAYER_NAMES[match[3]]}"


def _head_dim(key: str, sizes: dict) -> int | None:
    """head_dim of the stack whose q or k weight `key` (ours) is; None for any other key."""
    match = re.fullmatch(r"(backbone|decoder)\.layers\.\d+\.attn\.[qk]_proj\.weight", key)
    return None if match is None else sizes[match[1]]["embed_dim"] // sizes[match[1]]["num_heads"]


def _state_from_hf(hf_state: dict, sizes: dict, config, source: Path) -> dict:
    codec = {k for k in hf_state if k.startswith("codec_model.")}
    if codec:
        log.info(
            "%s: %d codec_model.* tensors (Mimi) skipped: the codec is the run's tokenizer",
            source,
            len(codec),
        )
    depth = hf_state.get(DEPTH_EMBEDDINGS)
    audio = hf_state.get(OTHER_NAMES["audio_embeddings.weight"], depth)
    if depth is not None and not torch.equal(depth, audio):
        raise CheckpointMismatchError(
            f"{source}: {DEPTH_EMBEDDINGS} differs from the backbone's audio embeddings "
            f"(tie_codebooks_embeddings={config.tie_codebooks_embeddings}); our CSM, as Sesame's, has one table"
        )
    state = {}
    for key, value in hf_state.items():
        if key in codec or key == DEPTH_EMBEDDINGS:
            continue
        ours = _our_name(key)
        head_dim = _head_dim(ours, sizes)
        state[ours] = value if head_dim is None else _rope_rows(value, head_dim, to_hf=False)
    if audio is not None:
        state["audio_embeddings.weight"] = audio
    return state


def _hf_config(sizes: dict):
    """A `CsmConfig` of our sizes. Its token ids default to CSM-1B's (Llama-3's text ids, code 2050 as padding):
    those outside our vocabularies are left unset. The codec: transformers' Mimi with our number of codebooks,
    its weights not written."""
    from transformers import CsmConfig, MimiConfig

    backbone, decoder = sizes["backbone"], sizes["decoder"]
    K, V, T = sizes["num_codebooks"], sizes["cardinality"], sizes["text_vocab_size"]

    def llama(part: dict) -> dict:
        return dict(
            hidden_size=part["embed_dim"],
            intermediate_size=part["intermediate_dim"],
            num_hidden_layers=part["num_layers"],
            num_attention_heads=part["num_heads"],
            num_key_value_heads=part["num_kv_heads"],
            max_position_embeddings=part["max_seq_len"],
            rms_norm_eps=part["norm_eps"],
            rope_theta=float(part["rope_base"]),
            rope_scaling=_hf_rope(part),
        )

    text_ids = dict(
        pad_token_id=128_002,
        bos_token_id=128_000,
        audio_token_id=128_002,
        audio_eos_token_id=128_003,
    )
    config = CsmConfig(
        num_codebooks=K,
        vocab_size=V,
        text_vocab_size=T,
        **llama(backbone),
        **{name: i if i < T else None for name, i in text_ids.items()},
        codebook_pad_token_id=2050 if 2050 < V else None,
        codebook_eos_token_id=0,
        tie_codebooks_embeddings=True,
        depth_decoder_config=dict(
            num_codebooks=K,
            backbone_hidden_size=backbone["embed_dim"],
            vocab_size=V,
            **llama(decoder),
        ),
        codec_config=MimiConfig(num_quantizers=K),
    )
    config.architectures = ["CsmForConditionalGeneration"]
    return config


# -- export ----------------------------------------------------------------------------------------------------
def export_checkpoint(model: CSM, out_dir: str | Path, fmt: str) -> Path:
    """Write `model` in `fmt` ("sesame": config.json + model.safetensors; "transformers": a folder that
    `CsmForConditionalGeneration.from_pretrained` loads, less the codec's weights) -> out_dir."""
    if fmt not in FORMATS:
        raise ValueError(f"CSM exports to {FORMATS}, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = sizes_of(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if fmt == "sesame":
        _write_sesame(sizes, state, out)
    else:
        _write_transformers(sizes, state, out)
    return out


def _write_sesame(sizes: dict, state: dict, out: Path) -> None:
    args = dict(
        text_vocab_size=sizes["text_vocab_size"],
        audio_vocab_size=sizes["cardinality"],
        audio_num_codebooks=sizes["num_codebooks"],
    )
    custom = {}
    for part in ("backbone", "decoder"):
        name = next(
            (n for n, s in FLAVORS.items() if full_sizes(s) == sizes[part]), f"slmlab-{part}"
        )
        if name not in FLAVORS:
            custom[name] = sizes[part]
        args[f"{part}_flavor"] = name
    if custom:
        args["flavors"] = custom
    (out / "config.json").write_text(json.dumps(args, indent=2) + "\n")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_transformers(sizes: dict, state: dict, out: Path) -> None:
    from transformers import GenerationConfig

    hf_state = {}
    for key, value in state.items():
        head_dim = _head_dim(key, sizes)
        hf_state[_hf_name(key)] = (
            value if head_dim is None else _rope_rows(value, head_dim, to_hf=True)
        )
    # the depth decoder's copy of the audio embeddings, stored as the release stores it
    hf_state[DEPTH_EMBEDDINGS] = state["audio_embeddings.weight"].clone()
    _hf_config(sizes).save_pretrained(out)
    save_file(hf_state, str(out / "model.safetensors"), metadata={"format": "pt"})
    sampling = dict(do_sample=True, top_k=50, temperature=0.9)  # the reference's, and model=csm's
    GenerationConfig(
        **sampling, **{f"depth_decoder_{k}": v for k, v in sampling.items()}
    ).save_pretrained(out)

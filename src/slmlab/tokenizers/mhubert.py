"""Spirit LM's released speech tokenizer, read into transformers: mHuBERT and its linear unit quantizer.

The release (facebookresearch/spiritlm, `speech_tokenizer/hubert_25hz/`) holds two files:

- `mhubert_base_25hz.pt`: a fairseq HuBERT in s3prl's "converted" layout, a dict of `model_cfg` and
  `task_cfg` (fairseq's HubertConfig / HubertPretrainingConfig as plain dicts), `model_weight` (the
  fairseq-named state dict) and `dictionaries_symbols`. Its convolution strides multiply to 640 samples:
  one frame every 40 ms, 25 Hz.
- `L11_quantizer_500.pt`: not k-means but a small classifier trained with CTC on layer-11 features, a
  dict of `model_cfg` ({vocab_size, dim, upstream_dim}) and `model_weight` (an `nn.Sequential` of three
  linear layers with LeakyReLU between them, 500 units plus a CTC blank).

    model = read_mhubert("/models/spiritlm/speech_tokenizer/hubert_25hz/mhubert_base_25hz.pt")
    hidden = model(wav[None], output_hidden_states=True).hidden_states[11]    # [1, S/640, 768]
    quantizer = read_linear_quantizer(".../L11_quantizer_500.pt")
    units = quantizer(hidden[0])                                               # [S/640] in 0..499

`read_mhubert` replaces fairseq's (and s3prl's) HubertModel with transformers' `HubertModel`, renaming
the keys; `hidden_states[L]` is fairseq's `extract_features(output_layer=L)`. The units path
`tokenizer/speech=units_spiritlm_release` reads both (tokenizers/units.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
from torch import nn
from transformers import HubertConfig, HubertModel

from slmlab.artifacts import load_tensors
from slmlab.convert import load_matching

CONVERTED_KEYS = ("model_cfg", "task_cfg", "model_weight")
"""What s3prl's `load_and_convert_fairseq_ckpt` writes (and the release ships)."""
UNUSED_AT_INFERENCE = ("label_embs_concat", "final_proj.weight", "final_proj.bias")
"""Pretraining heads: the release's own loader drops them too."""


def hubert_config_from_fairseq(model_cfg: dict) -> HubertConfig:
    """fairseq's HubertConfig (a dict) -> transformers' `HubertConfig` of the same network, for inference.

    `conv_feature_layers` is fairseq's string "[(dim, kernel, stride), ...]"; `extractor_mode` "default"
    is one group norm in the first convolution (transformers: feat_extract_norm="group"), "layer_norm" a
    layer norm in each; `layer_norm_first` is transformers' `do_stable_layer_norm`."""
    layers = eval_conv_layers(
        model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    )
    mode = model_cfg.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"mHuBERT extractor_mode {mode!r}: expected 'default' or 'layer_norm'")
    if model_cfg.get("layer_type", "transformer") != "transformer":
        raise ValueError(
            f"mHuBERT layer_type {model_cfg['layer_type']!r}: only 'transformer' is read"
        )
    return HubertConfig(
        hidden_size=model_cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=model_cfg.get("encoder_layers", 12),
        num_attention_heads=model_cfg.get("encoder_attention_heads", 12),
        intermediate_size=model_cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=model_cfg.get("activation_fn", "gelu"),
        conv_dim=[dim for dim, _, _ in layers],
        conv_kernel=[kernel for _, kernel, _ in layers],
        conv_stride=[stride for _, _, stride in layers],
        conv_bias=model_cfg.get("conv_bias", False),
        feat_extract_norm="group" if mode == "default" else "layer",
        num_conv_pos_embeddings=model_cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=model_cfg.get("conv_pos_groups", 16),
        conv_pos_batch_norm=model_cfg.get("conv_pos_batch_norm", False),
        do_stable_layer_norm=model_cfg.get("layer_norm_first", False),
        layer_norm_eps=1e-5,  # fairseq's LayerNorm and GroupNorm
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        apply_spec_augment=False,
    )


def eval_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", as a list of
    (dim, kernel, stride); only list literals, `+` and `*` are allowed (fairseq itself calls eval)."""
    tree = ast.parse(spec, mode="eval").body

    def value(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return value(node.left) * value(node.right)
        return ast.literal_eval(node)

    return [tuple(layer) for layer in value(tree)]


def fairseq_to_transformers_key(key: str) -> str:
    """A fairseq HuBERT state-dict key -> the key of the same weight in transformers' `HubertModel`."""
    rules = [
        (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
        (
            r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.",
            r"feature_extractor.conv_layers.\1.layer_norm.",
        ),
        (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),
        (r"^post_extract_proj\.", "feature_projection.projection."),
        (r"^layer_norm\.", "feature_projection.layer_norm."),
        (r"^mask_emb$", "masked_spec_embed"),
        # transformers keeps the positional convolution's weight norm as a parametrization
        (
            r"^encoder\.pos_conv\.0\.weight_g$",
            "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        ),
        (
            r"^encoder\.pos_conv\.0\.weight_v$",
            "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        ),
        (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv_embed.conv."),
        (r"^encoder\.pos_conv\.1\.", "encoder.pos_conv_embed.batch_norm."),
        (r"\.self_attn\.", ".attention."),
        (r"\.self_attn_layer_norm\.", ".layer_norm."),
        (r"\.fc1\.", ".feed_forward.intermediate_dense."),
        (r"\.fc2\.", ".feed_forward.output_dense."),
    ]
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def read_mhubert(path: str | Path) -> HubertModel:
    """A released mHuBERT (s3prl's converted fairseq layout, above) -> transformers `HubertModel` in eval
    mode, every weight of the file used; a file that does not fit is refused naming the first key."""
    state = load_tensors(path, "the release's speech_tokenizer/hubert_25hz/mhubert_base_25hz.pt")
    missing = [key for key in CONVERTED_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{path}: not a converted fairseq HuBERT (no {missing[0]!r}; expected the keys "
            f"{', '.join(CONVERTED_KEYS)}, as s3prl writes them and Spirit LM releases them)"
        )
    model = HubertModel(hubert_config_from_fairseq(dict(state["model_cfg"])))
    model.config.do_normalize = bool(state["task_cfg"].get("normalize", False))
    theirs = {  # our key -> the file's
        fairseq_to_transformers_key(key): key
        for key in state["model_weight"]
        if key not in UNUSED_AT_INFERENCE
    }
    weights = {ours: state["model_weight"][key] for ours, key in theirs.items()}
    load_matching(model, weights, str(path), lambda key: theirs.get(key, key))
    return model.eval()


class LinearUnitQuantizer(nn.Module):
    """Spirit LM's unit classifier: features [T, dim] -> units [T] in 0..vocab_size-1.

    Three linear layers with LeakyReLU, widths narrowing from `dim` towards vocab_size + 1 (the last class
    is the CTC blank); each frame takes its argmax, and blanks are filled as `fill_blanks` says."""

    def __init__(self, vocab_size: int, dim: int, upstream_dim: int) -> None:
        super().__init__()
        out_dim = vocab_size + 1
        mid = upstream_dim - out_dim
        widths = [dim, dim - mid // 4, dim - mid // 2, out_dim]
        self.encoder = nn.Sequential(
            nn.Linear(widths[0], widths[1]),
            nn.LeakyReLU(),
            nn.Linear(widths[1], widths[2]),
            nn.LeakyReLU(),
            nn.Linear(widths[2], widths[3]),
        )
        self.vocab_size = vocab_size
        self.settings = {"vocab_size": vocab_size, "dim": dim, "upstream_dim": upstream_dim}

    def save(self, path: str | Path) -> None:
        """The release's layout ({model_cfg, model_weight}), which `read_linear_quantizer` reads."""
        torch.save({"model_cfg": self.settings, "model_weight": self.encoder.state_dict()}, path)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        units = self.encoder(features).argmax(-1)
        return fill_blanks(units, self.vocab_size)


def fill_blanks(units: torch.Tensor, blank: int) -> torch.Tensor:
    """units [T] with `blank` frames -> each blank replaced by the nearest non-blank unit to its left,
    cyclically as the release's repeated `torch.roll` does: leading blanks take the sequence's last
    non-blank unit (all blanks: unit 0)."""
    keep = units != blank
    if not keep.any():
        return torch.zeros_like(units)
    kept = keep.nonzero()[:, 0]
    positions = torch.where(keep, torch.arange(len(units)), torch.full_like(units, -1))
    source = torch.cummax(positions, 0).values
    source[: int(kept[0])] = int(kept[-1])
    return units[source]


def read_linear_quantizer(path: str | Path) -> LinearUnitQuantizer:
    """The release's `L11_quantizer_500.pt` ({model_cfg: {vocab_size, dim, upstream_dim}, model_weight})."""
    state = load_tensors(path, "the release's speech_tokenizer/hubert_25hz/L11_quantizer_500.pt")
    if not {"model_cfg", "model_weight"} <= set(state):
        raise ValueError(
            f"{path}: not a Spirit LM linear quantizer (expected the keys model_cfg and model_weight)"
        )
    settings = state["model_cfg"]
    quantizer = LinearUnitQuantizer(
        settings["vocab_size"], settings["dim"], settings["upstream_dim"]
    )
    load_matching(quantizer.encoder, state["model_weight"], str(path))
    return quantizer.eval()

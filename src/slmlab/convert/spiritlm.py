"""Spirit LM's released checkpoints in and out (facebookresearch/spiritlm: spirit-lm-base-7b,
spirit-lm-expressive-7b).

A release is a Hugging Face Llama folder (config.json, pytorch_model.bin, tokenizer.model and its
tokenizer config) whose tokenizer holds, after Llama-2's 32,000 text ids, `[Text]` = 32,000,
`[Speech]` = 32,001, `[Hu0]`..`[Hu500]` = 32,002..32,502 and (Expressive) `[Pi0]`..`[Pi63]` =
32,503..32,566, `[St0]`..`[St99]` = 32,567..32,666; the embeddings are padded to 32,512 (Base) and 32,768
(Expressive) rows. `tokenizers/interleaved.py` (layout=release) maps our speech tokens onto those ids.

    detect(path)                      -> "spiritlm" for such a folder, else None
    import_checkpoint(path)           -> SpiritLMCheckpoint(net, sizes, tokenizer, kinds)
    export_checkpoint(model, out, "spiritlm")   model: a SpiritLMCheckpoint or a SpiritLMTask in that layout
    load_release_lm(vocab_size, pretrained_path, **sizes)   the loader `model/spiritlm/layout=release` uses

Weights go through `load_matching`: a size preset or a vocabulary that does not fit the checkpoint is
refused naming the first mismatching key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import load_state_dict

from slmlab.convert import CheckpointMismatchError, load_matching
from slmlab.models.pretrained import load_local
from slmlab.tokenizers.interleaved import RELEASE_SWITCHES
from slmlab.tokenizers.text import TextTokenizer

log = logging.getLogger(__name__)

FORMATS = ("spiritlm",)
"""spiritlm: the released layout above (what facebookresearch/spiritlm's `Spiritlm` loads)."""
EXPORT_TAKES_TASK = True
"""`export_checkpoint` takes a run's task: the layout needs its tokenizers too."""

LLAMA_KEYS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "max_positions": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "dropout": "attention_dropout",
    "pad_token_id": "pad_token_id",
}
"""`build_llama_lm`'s size keywords (the `model/spiritlm/size` presets) -> LlamaConfig's names."""
UNSEEN_IN_SHAPES = ("num_heads", "num_kv_heads", "rope_theta")
"""Sizes a wrong value of which leaves every weight's shape intact: compared with the checkpoint's."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class SpiritLMCheckpoint:
    """An imported release: the LM, its sizes (`build_llama_lm`'s keywords), its tokenizer (the release
    ids) and the speech token kinds it holds (Base: Hu; Expressive: Hu, Pi, St)."""

    net: LlamaForCausalLM
    sizes: dict
    tokenizer: TextTokenizer
    kinds: tuple[str, ...]


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a `save_pretrained` folder: model.safetensors or pytorch_model.bin (the release's),
    whole or sharded (`*.index.json`), read by transformers' `load_state_dict` (weights only)."""
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / name).is_file():
            files = [name]
        else:
            continue
        state = {}
        for file in files:
            state.update(load_state_dict(str(folder / file)))
        return state
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)} (nor a sharded index)")


def load_release_lm(
    vocab_size: int,
    pretrained_path: str,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int | None = None,
    rope_theta: float | None = None,
    dropout: float | None = None,
    pad_token_id: int | None = None,
    init_device: str | None = None,
) -> LlamaForCausalLM:
    """A Llama of `vocab_size` rows with the weights of the local folder `pretrained_path`: its
    config.json's settings (norm eps, RoPE scaling, ...) with the given sizes (`build_llama_lm`'s keywords,
    from `model/spiritlm/size`; None: the checkpoint's) in their place. A size or vocabulary that does
    not fit is refused naming the key (`load_matching`). init_device="meta": shapes only, no weights read.
    """
    sizes = {key: value for key, value in locals().items() if key in LLAMA_KEYS}
    config = load_local(LlamaConfig, pretrained_path)
    given = {key: value for key, value in sizes.items() if value is not None}
    if "num_heads" in given and "num_kv_heads" not in given:
        given["num_kv_heads"] = given["num_heads"]
    for key in UNSEEN_IN_SHAPES:
        if key in given and given[key] != getattr(config, LLAMA_KEYS[key]):
            raise CheckpointMismatchError(
                f"{pretrained_path}: {key}={given[key]}, the checkpoint's config.json has "
                f"{LLAMA_KEYS[key]}={getattr(config, LLAMA_KEYS[key])} (is the size preset the checkpoint's?)"
            )
    for key, value in given.items():
        setattr(config, LLAMA_KEYS[key], value)
    config.vocab_size = vocab_size
    if {"hidden_size", "num_heads"} & set(given):  # else the checkpoint's own head_dim stands
        config.head_dim = config.hidden_size // config.num_attention_heads
    with torch.device(init_device or "cpu"):
        model = LlamaForCausalLM(config)
    if init_device == "meta":
        return model
    state = read_state_dict(Path(pretrained_path))
    stale = [key for key in state if key.endswith("rotary_emb.inv_freq")]  # older saves; recomputed
    for key in stale:
        del state[key]
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    load_matching(model, state, pretrained_path)
    log.info(
        "loaded %s (%d tensors; %d stale RoPE buffers dropped)",
        pretrained_path,
        len(state),
        len(stale),
    )
    return model


def release_kinds(tokenizer: TextTokenizer) -> tuple[str, ...] | None:
    """The speech token kinds a tokenizer holds in the release's spelling (None: not a release tokenizer)."""
    hf = tokenizer.hf

    def holds(token: str) -> bool:
        return hf.convert_tokens_to_ids(token) not in (None, hf.unk_token_id)

    if not all(holds(token) for token in (*RELEASE_SWITCHES, "[Hu0]")):
        return None
    return ("Hu", "Pi", "St") if holds("[Pi0]") and holds("[St0]") else ("Hu",)


def detect(path: str | Path) -> str | None:
    """ "spiritlm" for a Llama folder whose tokenizer holds `[Text]`, `[Speech]` and `[Hu0]`, else None."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return None
    if json.loads((folder / "config.json").read_text()).get("model_type") != "llama":
        return None
    try:
        tokenizer = TextTokenizer.from_pretrained(folder)
    except (OSError, ValueError):  # no tokenizer files, or ones transformers cannot read
        return None
    return "spiritlm" if release_kinds(tokenizer) else None


def import_checkpoint(path: str | Path, **sizes) -> SpiritLMCheckpoint:
    """A release folder -> its LM (fp32) with the checkpoint's weights, sizes, tokenizer and token kinds.
    sizes: a size preset to check the checkpoint against (`load_release_lm`)."""
    folder = Path(path)
    if detect(folder) != "spiritlm":
        raise ValueError(
            f"{folder}: not a Spirit LM release folder (a Llama config.json and a tokenizer holding "
            f"{', '.join(RELEASE_SWITCHES)} and [Hu0])"
        )
    tokenizer = TextTokenizer.from_pretrained(folder)
    vocab_size = load_local(LlamaConfig, str(folder)).vocab_size
    net = load_release_lm(vocab_size, str(folder), **sizes)
    config = net.config
    found = {key: getattr(config, name) for key, name in LLAMA_KEYS.items() if key != "dropout"}
    return SpiritLMCheckpoint(
        net, {"vocab_size": vocab_size, **found}, tokenizer, release_kinds(tokenizer)
    )


def export_checkpoint(model, out_dir: str | Path, fmt: str = "spiritlm") -> Path:
    """Write `model` (a SpiritLMCheckpoint, or a SpiritLMTask with layout=release) as a release folder:
    the LM (safetensors), its tokenizer (tokenizer.model + tokenizer_config.json, which transformers'
    LlamaTokenizer reads as the reference does) and, from a task, our speech tokenizer beside them (its
    units are ours, not the release's mHuBERT units). -> out_dir"""
    if fmt not in FORMATS:
        raise ValueError(f"Spirit LM exports to {' | '.join(FORMATS)}, not {fmt!r}")
    vocab = getattr(model, "vocab", None)
    if vocab is not None and vocab.layout != "release":
        raise ValueError(
            f"this Spirit LM uses layout={vocab.layout}; only a model in the release's token layout "
            "(model/spiritlm/layout=release, continued from a release folder) exports to it"
        )
    if release_kinds(model.tokenizer) is None:
        raise ValueError(
            "the model's tokenizer holds no [Text], [Speech], [Hu0]: not the release layout"
        )
    out = Path(out_dir)
    model.net.save_pretrained(out)
    model.tokenizer.save(out)
    speech_tokenizer = getattr(model, "speech_tokenizer", None)
    if speech_tokenizer is not None:
        speech_tokenizer.save(out)
    return out

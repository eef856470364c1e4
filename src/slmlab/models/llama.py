"""A transformers `LlamaForCausalLM`, built tiny from explicit sizes or loaded from a local folder."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slmlab.models.pretrained import load_local


def build_llama_lm(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 1024,
    rope_theta: float = 10000.0,
    dropout: float = 0.0,
    pretrained_path: str | None = None,
    pad_token_id: int | None = None,
    init_device: str | None = None,
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    """From scratch: sizes as given (intermediate_size defaults to the SwiGLU 8/3 x hidden, rounded up
    to 64), on `init_device` ("meta": shapes only, to inspect a published-scale architecture without
    allocating it). From `pretrained_path` (a local `save_pretrained` folder): its sizes, with the input and
    output embeddings resized to `vocab_size` when the tokenizer has grown. attn_implementation: transformers'
    "sdpa" (torch's scaled_dot_product_attention, flash kernels on GPU), "flash_attention_2" (needs the
    flash-attn package) or "eager"."""
    if pretrained_path is not None:
        model = load_local(
            LlamaForCausalLM, pretrained_path, attn_implementation=attn_implementation
        )
        if model.get_input_embeddings().num_embeddings != vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    intermediate_size = intermediate_size or 64 * -(-(8 * hidden_size // 3) // 64)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        rope_theta=rope_theta,
        attention_dropout=dropout,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    with torch.device(init_device or "cpu"):
        return LlamaForCausalLM(config)

"""Spirit LM: one decoder-only LM over the interleaved vocabulary (`tokenizers/interleaved.py`).

The network is a transformers `LlamaForCausalLM` (as in the paper, which continues Llama-2 7B) from
`models/llama.build_llama_lm`: built from explicit sizes (`model/spiritlm/size=tiny|demo|7b`) or
loaded from a local folder with its embeddings resized for `[TEXT]`, `[SPEECH]` and the speech
tokens. Everything Spirit-LM-specific is in the token stream, so generation is the LM's own
`generate` with the other modality's ids suppressed.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM


@torch.no_grad()
def generate_in_modality(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    suppressed_ids: list[int],
    eos_token_id: int,
    pad_token_id: int,
    **sampling,
) -> torch.Tensor:
    """input_ids [1, L] -> new ids [N] (eos excluded). The output modality is enforced while decoding:
    `suppressed_ids` get -inf logits at every step (transformers' `SuppressTokensLogitsProcessor`), so a
    token of the other modality is never sampled. sampling: do_sample, temperature, top_p, max_new_tokens."""
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        suppress_tokens=suppressed_ids or None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **sampling,
    )[0, input_ids.shape[1] :]
    ends = (out == eos_token_id).nonzero()
    return out[: int(ends[0])] if len(ends) else out

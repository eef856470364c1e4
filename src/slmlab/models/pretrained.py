"""Pretrained checkpoints from local folders (transformers `save_pretrained` layout); nothing is
ever downloaded.

`load_local` is transformers' `from_pretrained` restricted to a folder that exists;
`load_or_build_speechlm` gives SpeechLM (`models/speechlm.py`) a pretrained encoder and/or decoder
(a decoder's embeddings grown to the tokenizer's vocabulary, for the `<|audio|>` token) and
builds any half without a folder from its sizes.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    ParakeetForCTC,
    PreTrainedModel,
    WhisperModel,
)

from slmlab.models.speechlm import MaskedWhisperEncoder, SpeechLM, build_speechlm


def load_local(auto_class, path: str, **loading):
    """`auto_class.from_pretrained(path, **loading)` (a model, config or any class with that method)
    from a local folder only: a missing folder is an error, never a download from the hub."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"pretrained model folder not found: {path} (slmlab never downloads)"
        )
    return auto_class.from_pretrained(path, local_files_only=True, **loading)


def load_audio_encoder(path: str, **loading) -> PreTrainedModel:
    """A local encoder checkpoint: Whisper's encoder half from a whole Whisper model, the
    `ParakeetEncoder` of a Parakeet CTC model (a FastConformer: the corpus's speech encoder,
    nvidia/parakeet-ctc-*), or any `AutoModel` (wav2vec2, HuBERT, ...). The Whisper half is copied
    into `MaskedWhisperEncoder`, which replaces `WhisperModel.get_encoder()`'s fixed 30 s input.
    loading: `from_pretrained`'s keywords (attn_implementation)."""
    model_type = load_local(AutoConfig, path).model_type
    if model_type == "whisper":
        whole = load_local(WhisperModel, path, **loading)
        encoder = MaskedWhisperEncoder(whole.config)
        encoder.load_state_dict(whole.get_encoder().state_dict())
        return encoder
    if model_type == "parakeet_ctc":
        return load_local(ParakeetForCTC, path, **loading).encoder
    return load_local(AutoModel, path, **loading)


def load_or_build_speechlm(
    vocab_size: int, audio_token_id: int, encoder: dict, decoder: dict, **network
) -> SpeechLM:
    """encoder / decoder: `{pretrained_path: <local folder>}` to load that half, or
    `{model_type, sizes...}` (with `pretrained_path` null or absent) to build it fresh; either may set
    `attn_implementation` (transformers': "sdpa", "flash_attention_2", "eager"; absent: transformers'
    default, sdpa where the model has it);
    network: the other keywords of `build_speechlm` (stacking, projector, LoRA, CTC, special ids).

    A pretrained decoder has its embeddings resized when the tokenizer has grown (the `<|audio|>`
    token)."""
    encoder, decoder = dict(encoder), dict(decoder)
    encoder_path = encoder.pop("pretrained_path", None)
    decoder_path = decoder.pop("pretrained_path", None)
    audio_model = text_model = None
    if encoder_path:
        audio_model = load_audio_encoder(
            encoder_path, attn_implementation=encoder.get("attn_implementation")
        )
    if decoder_path:
        text_model = load_local(
            AutoModelForCausalLM,
            decoder_path,
            attn_implementation=decoder.get("attn_implementation"),
        )
    if text_model is not None and text_model.get_input_embeddings().num_embeddings < vocab_size:
        text_model.resize_token_embeddings(vocab_size)
    return build_speechlm(
        vocab_size,
        audio_token_id,
        audio_model if audio_model is not None else encoder,
        text_model if text_model is not None else decoder,
        **network,
    )

"""SpeechLM: a transformers audio encoder -> a frame-stacking projector -> a transformers causal LM.

    features: waveform [B, S] (wav2vec2/HuBERT) or log-mel [B, 80, F] at 100 Hz (Whisper,
              FastConformer), from `tokenizers/frontends.py`
      --encoder--> states [B, T_enc, D_enc] at 50 Hz (wav2vec2, HuBERT, Whisper) or 25 Hz
                   (the FastConformer: the corpus's speech encoder, 4x subsampling)
      --compress (optional)--> [B, N, D_enc]: compressor="ctc" averages the states over each run of one
                   greedy CTC label and drops the blank runs (Speech-LLaMA's CTC compressor), about one
                   token per character; "stack" (default) keeps every state
      --stack k, project--> audio embeds [B, ceil(N/k), D_llm]
      --written over the <|audio|> tokens of the prompt (`tokenizers/prompts.py`)--> decoder,
      loss on the transcript only (+ an optional character CTC loss on the encoder states).

`SpeechLM` is a transformers `PreTrainedModel` with a composite config (`audio_config` +
`text_config`, as Qwen2-Audio has), so the whole model saves and loads with `save_pretrained` /
`from_pretrained`. `build_speechlm` builds it from explicit sizes; `models/pretrained.py` loads its
encoder and decoder from local checkpoint folders.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.models.auto import CONFIG_MAPPING
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from slmlab.constants import CTC_ALPHABET


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths [B] -> bool [B, max_len], True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def ctc_label_ids(text: str, alphabet: str = CTC_ALPHABET) -> list[int]:
    """A text's lower-cased characters -> CTC label ids 1..len(alphabet) (0 is the blank), others dropped."""
    labels = _label_of(alphabet)
    return [labels[c] for c in text.lower() if c in labels]


@functools.cache
def _label_of(alphabet: str) -> dict[str, int]:
    """alphabet's character -> its CTC label id (1-based; joint decoding looks up millions per evaluation)."""
    return {c: i + 1 for i, c in enumerate(alphabet)}


def ctc_character_ids(
    texts: list[str], alphabet: str = CTC_ALPHABET
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC head's targets: lower-cased characters -> ids 1..len(alphabet) (0 is CTC's blank),
    others dropped: ([B, N] padded, lengths [B]). Replaces a character tokenizer
    (transformers' `Wav2Vec2CTCTokenizer`), which needs a vocabulary file."""
    rows = [ctc_label_ids(text, alphabet) for text in texts]
    ids = torch.zeros(len(rows), max(map(len, rows), default=0), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(row) for row in rows])


def ctc_compress(
    states: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, blank: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-LLaMA's CTC compressor (Wu et al., 2023, "blank removal" + "frame averaging"):
    states [B, T, D] with greedy CTC labels [B, T] (lengths [B] valid frames) -> the mean state of each
    run of one non-blank label, in order: ([B, N, D] zero-padded, run counts [B]). An utterance
    with no non-blank frame keeps one token, the mean of all its frames, so that no prompt is left
    without audio."""
    batch, frames, dim = states.shape
    valid = frame_mask(lengths, frames)
    kept = valid & (labels != blank)
    silent = kept.sum(1) == 0
    kept = kept | (silent[:, None] & valid)  # a silent row's frames: one run of blanks
    changed = torch.ones_like(kept)
    changed[:, 1:] = labels[:, 1:] != labels[:, :-1]
    starts = kept & changed
    runs = starts.sum(1)
    run_of_frame = starts.cumsum(1) - 1  # [B, T], meaningful where kept
    width = max(int(runs.max()), 1) if batch else 1
    flat = (torch.arange(batch, device=states.device)[:, None] * width + run_of_frame)[kept]
    sums = states.new_zeros(batch * width, dim).index_add(0, flat, states[kept])
    counts = states.new_zeros(batch * width).index_add(0, flat, states.new_ones(len(flat)))
    return (sums / counts.clamp(min=1)[:, None]).view(batch, width, dim), runs


# -- encoder ------------------------------------------------------------------------------------------
class MaskedWhisperEncoder(WhisperEncoder):
    """Whisper's encoder on inputs of any length up to 30 s, padded frames kept out of every result.

    Replaces `WhisperEncoder.forward`, which requires exactly 3000 mel frames and ignores the
    attention mask (Ultravox patches it the same way). This forward reuses its modules:
    convolutions with the padded frames zeroed after each (so a padded batch gives the same states
    as each utterance alone), the first T positional embeddings, and a key-padding mask in every
    layer.

    pool > 1 average-pools the states by that factor before the final LayerNorm, dropping an
    incomplete last group: Qwen2-Audio's encoder (`Qwen2AudioEncoder`, pool 2, 25 Hz).
    """

    def __init__(self, config: PretrainedConfig, pool: int = 1) -> None:
        super().__init__(config)
        self.pool = pool

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Mel frames [B] -> output states [B]: the stride-2 convolution, then the pooling."""
        return super()._get_feat_extract_output_lengths(input_lengths) // self.pool

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> BaseModelOutput:
        """input_features [B, n_mels, F]; attention_mask [B, F] over mel frames
        -> last_hidden_state [B, ceil(F/2) // pool, D]."""
        batch, _, num_frames = input_features.shape
        lengths = (
            attention_mask.sum(-1)
            if attention_mask is not None
            else torch.full((batch,), num_frames, device=input_features.device)
        )
        if num_frames > 2 * self.max_source_positions:
            raise ValueError(
                f"audio of {num_frames} mel frames exceeds the encoder's "
                f"{2 * self.max_source_positions}"
            )
        x = nn.functional.gelu(self.conv1(input_features))
        x = x * frame_mask(lengths, num_frames)[:, None, :]
        x = nn.functional.gelu(self.conv2(x))
        valid = frame_mask(super()._get_feat_extract_output_lengths(lengths), x.shape[-1])
        x = x.transpose(1, 2) * valid[..., None] + self.embed_positions.weight[: x.shape[-1]]
        x = nn.functional.dropout(x, p=self.dropout, training=self.training)
        key_padding = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~valid, torch.finfo(x.dtype).min
        )
        for layer in self.layers:
            x = layer(x, key_padding[:, None, None, :], layer_head_mask=None)[0]
        if self.pool > 1:
            x = nn.functional.avg_pool1d(x.transpose(1, 2), self.pool).transpose(1, 2)
        return BaseModelOutput(last_hidden_state=self.layer_norm(x))


def _encoder_from_config(config: PretrainedConfig, pool: int = 1) -> PreTrainedModel:
    if config.model_type == "whisper":
        return MaskedWhisperEncoder(config, pool)
    if pool > 1:
        raise ValueError(f"encoder_pool={pool} is for Whisper encoders, not {config.model_type}")
    return AutoModel.from_config(config)


# -- projector ----------------------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """[..., 2H] -> [..., H]: value x SiLU(gate), the two halves of the input (no torch built-in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * nn.functional.silu(gate)


class StackingProjector(nn.Module):
    """[B, T, D_enc] -> [B, ceil(T/k), D_llm]: k consecutive frames concatenated (the last group
    zero-padded), then an MLP, SwiGLU or linear block.

    mlp: LayerNorm -> Linear -> GELU -> Linear (SLAM-LLM's `EncoderProjectorConcat`).
    swiglu: RMSNorm -> Linear -> SwiGLU -> RMSNorm -> Linear (Ultravox's `UltravoxProjector`; with
        mid_norm=False the second RMSNorm comes after the last Linear instead, as in Ultravox <= 0.4.1).
        Ultravox's own: bias=False, norm_eps=1e-6.
    linear: one Linear (Qwen2-Audio's `Qwen2AudioMultiModalProjector`, with k = 1).
    bias: the Linear layers' biases; norm_eps: the RMSNorms' (None: torch's default, float eps).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        stack_factor: int = 4,
        kind: str = "swiglu",
        hidden_dim: int | None = None,
        bias: bool = True,
        norm_eps: float | None = None,
        mid_norm: bool = True,
    ) -> None:
        super().__init__()
        self.stack_factor = stack_factor
        stacked, hidden = in_dim * stack_factor, hidden_dim or out_dim
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.LayerNorm(stacked),
                nn.Linear(stacked, hidden, bias=bias),
                nn.GELU(),
                nn.Linear(hidden, out_dim, bias=bias),
            )
        elif kind == "swiglu":
            # Identity keeps each layer at its index whichever norm is used (net.3 mid, net.5 output)
            self.net = nn.Sequential(
                nn.RMSNorm(stacked, eps=norm_eps),
                nn.Linear(stacked, 2 * hidden, bias=bias),
                SwiGLU(),
                nn.RMSNorm(hidden, eps=norm_eps) if mid_norm else nn.Identity(),
                nn.Linear(hidden, out_dim, bias=bias),
                nn.Identity() if mid_norm else nn.RMSNorm(out_dim, eps=norm_eps),
            )
        elif kind == "linear":
            self.net = nn.Sequential(nn.Linear(stacked, out_dim, bias=bias))
        else:
            raise ValueError(f"unknown projector kind {kind!r}; choose mlp, swiglu or linear")

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Input frames [B] -> output frames [B] (ceil(T/k))."""
        return -(-lengths // self.stack_factor)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = states.shape
        states = nn.functional.pad(states, (0, 0, 0, -frames % self.stack_factor))
        return self.net(states.reshape(batch, -1, dim * self.stack_factor))


COMPRESSORS = ("stack", "ctc")


# -- model --------------------------------------------------------------------------------------------
class SpeechLMConfig(PretrainedConfig):
    """audio_config: any transformers audio encoder config (whisper, wav2vec2, hubert, ...);
    text_config: any causal LM config; lora: peft `LoraConfig` keywords, or None; ctc_weight > 0
    adds a character CTC head on the encoder and `ctc_weight` x its loss (hybrid CTC/attention
    training, as ESPnet does), over `ctc_alphabet` (id 0 is the blank). projector_bias,
    projector_norm_eps, projector_mid_norm: `StackingProjector`'s bias, norm_eps, mid_norm;
    encoder_pool: `MaskedWhisperEncoder`'s pool (2 for Qwen2-Audio); compressor: "stack" (every encoder
    state) or "ctc" (`ctc_compress` by the CTC head's greedy labels, before stacking; needs ctc_weight > 0)."""

    model_type = "slmlab_speechlm"
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_config=None,
        text_config=None,
        stack_factor: int = 4,
        projector: str = "swiglu",
        projector_hidden: int | None = None,
        audio_token_id: int | None = None,
        lora: dict | None = None,
        ctc_weight: float = 0.0,
        ctc_alphabet: str = CTC_ALPHABET,
        projector_bias: bool = True,
        projector_norm_eps: float | None = None,
        projector_mid_norm: bool = True,
        encoder_pool: int = 1,
        compressor: str = "stack",
        **kwargs,
    ) -> None:
        # first: PretrainedConfig's init sets the sub-configs' attention implementation to None,
        # which would break an encoder or decoder already built on them (loaded from a folder)
        super().__init__(**kwargs)
        self.audio_config = _as_config(audio_config or {"model_type": "whisper"})
        self.text_config = _as_config(text_config or {"model_type": "qwen2"})
        self.stack_factor = stack_factor
        self.projector = projector
        self.projector_hidden = projector_hidden
        self.audio_token_id = audio_token_id
        self.lora = lora
        self.ctc_weight = ctc_weight
        self.ctc_alphabet = ctc_alphabet
        self.projector_bias = projector_bias
        self.projector_norm_eps = projector_norm_eps
        self.projector_mid_norm = projector_mid_norm
        self.encoder_pool = encoder_pool
        if compressor not in COMPRESSORS:
            raise ValueError(
                f"unknown compressor {compressor!r}; choose {' or '.join(COMPRESSORS)}"
            )
        if compressor == "ctc" and ctc_weight <= 0:
            raise ValueError("compressor='ctc' reads the CTC head's labels: set ctc_weight > 0")
        self.compressor = compressor


def _as_config(config) -> PretrainedConfig:
    """A config, or a dict `{model_type, sizes...}` -> that model type's config."""
    if isinstance(config, PretrainedConfig):
        return config
    config = dict(config)
    return CONFIG_MAPPING[config.pop("model_type")](**config)


@dataclass
class AudioEncoding:
    """`SpeechLM.encode`'s output; `forward` and `generate` take it back (`audio=`), so that a prompt
    sized by `lengths` (data-dependent under CTC compression) costs one encoder pass.

    states [B, T_enc, D_enc] (zero after each end), state_lengths [B]; ctc_logits [B, T_enc, V] or
    None without a CTC head; embeds [B, T_a, D_llm], lengths [B]: audio tokens per utterance."""

    states: torch.Tensor
    state_lengths: torch.Tensor
    ctc_logits: torch.Tensor | None
    embeds: torch.Tensor
    lengths: torch.Tensor


@dataclass
class SpeechLMOutput(CausalLMOutputWithPast):
    """`loss` (what training minimises) = `lm_loss` on the transcript tokens
    + ctc_weight x `ctc_loss`."""

    lm_loss: torch.Tensor | None = None
    ctc_loss: torch.Tensor | None = None


class SpeechLM(PreTrainedModel):
    """encoder -> projector -> decoder; see the module docstring for shapes."""

    config_class = SpeechLMConfig
    base_model_prefix = "speechlm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # decoders that tie their head to the input embeddings (GPT-2)
    _tied_weights_keys = [r"lm_head\.weight"]

    def __init__(
        self,
        config: SpeechLMConfig,
        encoder: PreTrainedModel | None = None,
        decoder: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        if encoder is None:
            encoder = _encoder_from_config(config.audio_config, config.encoder_pool)
        if decoder is None:
            decoder = AutoModelForCausalLM.from_config(config.text_config)
        self.encoder, self.decoder = encoder, decoder
        audio = config.audio_config
        audio_dim = audio.d_model if audio.model_type == "whisper" else audio.hidden_size
        self.projector = StackingProjector(
            audio_dim,
            config.text_config.hidden_size,
            config.stack_factor,
            config.projector,
            config.projector_hidden,
            config.projector_bias,
            config.projector_norm_eps,
            config.projector_mid_norm,
        )
        # character CTC on the encoder states (50 or 25 Hz): direct acoustic supervision for an encoder
        # trained from scratch
        self.ctc_head = None
        if config.ctc_weight > 0:
            self.ctc_head = nn.Linear(audio_dim, len(config.ctc_alphabet) + 1)
        if config.lora:
            from peft import LoraConfig, get_peft_model

            self.decoder = get_peft_model(
                self.decoder, LoraConfig(task_type="CAUSAL_LM", **config.lora)
            )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Encoder and decoder initialise themselves; the projector keeps PyTorch's default init."""

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder.get_output_embeddings()

    # -- audio --------------------------------------------------------------------------------------
    @property
    def input_name(self) -> str:
        """The encoder's input: `input_features` (log-mel) for Whisper and the FastConformer,
        `input_values` (waveform) otherwise."""
        if self.config.audio_config.model_type in ("whisper", "parakeet_encoder"):
            return "input_features"
        return "input_values"

    def encoder_output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for inputs of `input_lengths` samples (or mel frames), from its
        convolution strides."""
        if self.config.audio_config.model_type == "parakeet_encoder":
            return self.encoder._get_subsampling_output_length(input_lengths).long()
        return self.encoder._get_feat_extract_output_lengths(input_lengths).long()

    def audio_output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Audio embeddings (= `<|audio|>` tokens) per utterance after stacking; under CTC
        compression they depend on the audio: read `encode(...).lengths`."""
        if self.config.compressor == "ctc":
            raise ValueError(
                "with compressor='ctc' the number of audio tokens depends on the audio: "
                "use encode(features, feature_lengths).lengths"
            )
        return self.projector.output_lengths(self.encoder_output_lengths(input_lengths))

    def encoder_states(
        self, features: torch.Tensor, feature_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, S] or [B, n_mels, F], zero-padded; feature_lengths [B]
        -> (states [B, T_enc, D_enc] at 50 or 25 Hz, zero after each utterance's end; lengths [B])."""
        mask = frame_mask(feature_lengths, features.shape[-1]).long()
        # group-normed wav2vec2 variants (wav2vec2-base) must not get a mask: they were trained on
        # zero padding
        use_mask = (
            self.input_name == "input_features"
            or getattr(self.config.audio_config, "feat_extract_norm", "") == "layer"
        )
        if self.config.audio_config.model_type == "parakeet_encoder":
            features = features.transpose(1, 2)  # the FastConformer reads [B, F, n_mels]
        states = self.encoder(
            **{self.input_name: features}, attention_mask=mask if use_mask else None
        ).last_hidden_state
        lengths = self.encoder_output_lengths(feature_lengths)
        # zeros after the end, as an utterance alone is padded
        return states * frame_mask(lengths, states.shape[1])[..., None], lengths

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> AudioEncoding:
        """features [B, S] or [B, n_mels, F], zero-padded; feature_lengths [B] -> the encoder states,
        the CTC head's logits, and the audio embeddings [B, T_a, D_llm] (compressed, stacked,
        projected) with their lengths [B]."""
        states, state_lengths = self.encoder_states(features, feature_lengths)
        ctc_logits = self.ctc_head(states) if self.ctc_head is not None else None
        tokens, token_lengths = states, state_lengths
        if self.config.compressor == "ctc":
            tokens, token_lengths = ctc_compress(states, state_lengths, ctc_logits.argmax(-1))
        return AudioEncoding(
            states,
            state_lengths,
            ctc_logits,
            self.projector(tokens),
            self.projector.output_lengths(token_lengths),
        )

    def embed_inputs(
        self, input_ids: torch.Tensor, audio_embeds: torch.Tensor, audio_lengths: torch.Tensor
    ) -> torch.Tensor:
        """input_ids [B, L] -> text embeddings [B, L, D_llm] with the i-th utterance's audio frames
        written, in order, over its `<|audio|>` tokens (`config.audio_token_id`)."""
        is_audio = input_ids == self.config.audio_token_id
        frames = audio_embeds[frame_mask(audio_lengths, audio_embeds.shape[1])]
        if int(is_audio.sum()) != len(frames):
            raise ValueError(
                f"{int(is_audio.sum())} audio tokens (id {self.config.audio_token_id}) in the "
                f"prompt for {len(frames)} audio frames; expand the placeholder to "
                "`encode(...).lengths`"
            )
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_audio, 0))
        return embeds.masked_scatter(is_audio[..., None], frames.to(embeds.dtype))

    # -- LM -----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ctc_targets: torch.Tensor | None = None,
        ctc_target_lengths: torch.Tensor | None = None,
        audio: AudioEncoding | None = None,
    ) -> SpeechLMOutput:
        """input_ids [B, L] with `lengths[i]` `<|audio|>` tokens in row i; labels [B, L] (-100 where
        no loss); ctc_targets [B, N] transcript characters (`ctc_character_ids`, padded) and their
        lengths [B], for the CTC head; the audio as features (and lengths) or as their `encode`.
        loss = lm_loss (+ ctc_weight x ctc_loss)."""
        if audio is None:
            audio = self.encode(features, feature_lengths)
        inputs_embeds = self.embed_inputs(input_ids, audio.embeds, audio.lengths)
        out = self.decoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels
        )
        result = SpeechLMOutput(loss=out.loss, logits=out.logits, lm_loss=out.loss)
        if audio.ctc_logits is not None and ctc_targets is not None:
            log_probs = audio.ctc_logits.log_softmax(-1).float().transpose(0, 1)  # [T_enc, B, V]
            result.ctc_loss = nn.functional.ctc_loss(
                log_probs, ctc_targets, audio.state_lengths, ctc_target_lengths, zero_infinity=True
            )
            result.loss = out.loss + self.config.ctc_weight * result.ctc_loss
        return result

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        audio: AudioEncoding | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Left-padded prompts -> new token ids [B, N], through the decoder's `generate` (greedy,
        sampling, beam); the audio as in `forward`."""
        if audio is None:
            audio = self.encode(features, feature_lengths)
        inputs_embeds = self.embed_inputs(input_ids, audio.embeds, audio.lengths)
        return self.decoder.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )

    # -- training set-up ----------------------------------------------------------------------------
    FREEZABLE = ("encoder", "projector", "decoder", "decoder_except_head")

    def freeze(self, parts: list[str]) -> None:
        """Stop gradients to the named parts; `decoder_except_head` leaves only the LM head trainable
        in the decoder (with a tied head, as GPT-2 has, that is also the input embedding).
        Parameters the libraries keep frozen (Whisper's positions, peft's base weights) stay
        frozen."""
        unknown = set(parts) - set(self.FREEZABLE)
        if unknown:
            raise ValueError(f"cannot freeze {sorted(unknown)}; choose among {self.FREEZABLE}")
        if self.config.lora and {"decoder", "decoder_except_head"} & set(parts):
            raise ValueError(
                "freezing the decoder would freeze its LoRA adapters too; drop it from `freeze` "
                "(the adapters already leave the base decoder frozen)"
            )
        for part in parts:
            module = self.decoder if part == "decoder_except_head" else getattr(self, part)
            module.requires_grad_(False)
        if "decoder_except_head" in parts:
            self.get_output_embeddings().requires_grad_(True)


def build_speechlm(
    vocab_size: int,
    audio_token_id: int,
    encoder: dict | PreTrainedModel,
    decoder: dict | PreTrainedModel,
    stack_factor: int = 4,
    projector: str = "swiglu",
    projector_hidden: int | None = None,
    lora: dict | None = None,
    ctc_weight: float = 0.0,
    ctc_alphabet: str = CTC_ALPHABET,
    projector_bias: bool = True,
    projector_norm_eps: float | None = None,
    projector_mid_norm: bool = True,
    compressor: str = "stack",
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> SpeechLM:
    """encoder / decoder: `{model_type, sizes...}` for a fresh network at those sizes (a fresh
    decoder takes `vocab_size` and the special ids), or a built model to use as it is (loaded by
    `models/pretrained.py`). projector_*: see `StackingProjector` (an Ultravox-exportable
    projector: projector_bias=False, projector_norm_eps=1e-6); compressor: see `SpeechLMConfig`."""
    encoder_model = encoder if isinstance(encoder, PreTrainedModel) else None
    decoder_model = decoder if isinstance(decoder, PreTrainedModel) else None
    if decoder_model is not None:
        text_config = decoder_model.config
    else:
        text_config = _as_config(
            {
                **decoder,
                "vocab_size": vocab_size,
                "pad_token_id": pad_token_id,
                "bos_token_id": bos_token_id,
                "eos_token_id": eos_token_id,
            }
        )
    config = SpeechLMConfig(
        audio_config=encoder_model.config if encoder_model is not None else encoder,
        text_config=text_config,
        stack_factor=stack_factor,
        projector=projector,
        projector_hidden=projector_hidden,
        audio_token_id=audio_token_id,
        lora=lora,
        ctc_weight=ctc_weight,
        ctc_alphabet=ctc_alphabet,
        projector_bias=projector_bias,
        projector_norm_eps=projector_norm_eps,
        projector_mid_norm=projector_mid_norm,
        compressor=compressor,
    )
    return SpeechLM(config, encoder=encoder_model, decoder=decoder_model)

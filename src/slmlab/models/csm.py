"""CSM (Sesame's Conversational Speech Model): a Llama backbone over frames of K codec codebooks plus one
text column, predicting codebook 0 of the next frame, and a small Llama decoder predicting codebooks
1..K-1 of that frame from the backbone state. Backbone and decoder come from torchtune's `llama3_2`
builder with their token embeddings and output layers removed (as the reference does).

A sequence is a run of frames `tokens [B, S, K+1]` with `mask [B, S, K+1]`: a text frame holds one text
token in column K; an audio frame holds K codes in columns 0..K-1; a frame's input is the sum of its
masked column embeddings. Segments are `[speaker]text` frames, then the audio frames, then an all-zero
audio frame that ends the segment. The reference (SesameAILabs/csm) ships only `generate_frame`; the
training forward below, with compute amortisation (the decoder sees a random fraction of the audio
frames), follows the paper's description.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchtune.models.llama3_1 import Llama3ScaledRoPE
from torchtune.models.llama3_2 import llama3_2
from torchtune.modules.common_utils import local_kv_cache

log = logging.getLogger(__name__)


def llama3_2_transformer(
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int = 2048,
    rope_base: int = 500_000,
    norm_eps: float = 1e-5,
    scale_factor: float = 32,
    high_freq_factor: float = 4,
    old_context_len: int = 8192,
) -> nn.Module:
    """torchtune's Llama-3.2 with identity input embedding and output: [B, S, embed_dim] -> [B, S, embed_dim].

    scale_factor, high_freq_factor, old_context_len: Llama-3's RoPE scaling (torchtune's `Llama3ScaledRoPE`, its
    low_freq_factor 1); `llama3_2` fixes the last two at the values below, imported checkpoints may set them;
    scale_factor=1 is unscaled RoPE."""
    model = llama3_2(
        vocab_size=1,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        max_seq_len=max_seq_len,
        intermediate_dim=intermediate_dim,
        rope_base=rope_base,
        norm_eps=norm_eps,
        scale_factor=scale_factor,
        tie_word_embeddings=False,
    )
    rope = Llama3ScaledRoPE(
        dim=embed_dim // num_heads,
        max_seq_len=max_seq_len,
        base=rope_base,
        scale_factor=scale_factor,
        high_freq_factor=high_freq_factor,
        old_context_len=old_context_len,
    )
    for layer in model.layers:  # llama3_2 shares one RoPE module between its layers too
        layer.attn.pos_embeddings = rope
    model.tok_embeddings, model.output = nn.Identity(), nn.Identity()
    return model


@dataclass
class CSMOutput:
    loss: torch.Tensor  # c0_loss + decoder_loss
    c0_loss: torch.Tensor  # codebook 0 (backbone), mean over every audio target frame
    decoder_loss: (
        torch.Tensor
    )  # codebooks 1..K-1 (decoder), mean over the sampled frames and codebooks
    target_frames: int
    decoder_frames: int


def sample_topk(
    logits: torch.Tensor, topk: int, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [B, V] -> ids [B, 1]: softmax(logits / temperature) over the top-k, one draw each."""
    logits = logits / max(temperature, 1e-5)
    kth = torch.topk(logits, min(topk, logits.shape[-1])).values[:, -1:]
    probs = F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class CSM(nn.Module):
    """text_vocab_size: text tokenizer size; cardinality: codec codebook size (the reference reserves 2051 for
    2048 codes); num_codebooks: K; backbone / decoder: `llama3_2_transformer` sizes."""

    def __init__(
        self,
        text_vocab_size: int,
        cardinality: int,
        num_codebooks: int,
        backbone: dict,
        decoder: dict,
    ) -> None:
        super().__init__()
        self.num_codebooks, self.cardinality = num_codebooks, cardinality
        self.backbone, self.decoder = (
            llama3_2_transformer(**backbone),
            llama3_2_transformer(**decoder),
        )
        backbone_dim, decoder_dim = backbone["embed_dim"], decoder["embed_dim"]
        self.text_embeddings = nn.Embedding(text_vocab_size, backbone_dim)
        self.audio_embeddings = nn.Embedding(cardinality * num_codebooks, backbone_dim)
        self.projection = nn.Linear(backbone_dim, decoder_dim, bias=False)
        self.codebook0_head = nn.Linear(backbone_dim, cardinality, bias=False)
        self.audio_head = nn.Parameter(torch.empty(num_codebooks - 1, decoder_dim, cardinality))
        nn.init.normal_(self.audio_head, std=decoder_dim**-0.5)

    # -- embeddings --------------------------------------------------------------------------------------
    def embed_audio(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """codes [...] of one codebook -> [..., D] (codebook k owns rows k*cardinality .. (k+1)*cardinality-1)."""
        return self.audio_embeddings(codes + codebook * self.cardinality)

    def embed_frames(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, mask [B, S, K+1] -> [B, S, D]: the sum of each frame's unmasked column embeddings (a weighted
        `embedding_bag`, which never materialises the [B, S, K, D] column embeddings)."""
        B, S, _ = tokens.shape
        offsets = self.cardinality * torch.arange(self.num_codebooks, device=tokens.device)
        audio = F.embedding_bag(
            (tokens[..., :-1] + offsets).reshape(B * S, -1),
            self.audio_embeddings.weight,
            per_sample_weights=mask[..., :-1]
            .reshape(B * S, -1)
            .to(self.audio_embeddings.weight.dtype),
            mode="sum",
        )
        text = self.text_embeddings(tokens[..., -1]) * mask[..., -1:].to(
            self.text_embeddings.weight.dtype
        )
        return audio.view(B, S, -1) + text

    # -- training -----------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        decoder_fraction: float = 1 / 16,
        generator: torch.Generator | None = None,
    ) -> CSMOutput:
        """Next-frame losses. Targets are the audio frames (the end frame included) at positions 1..length-1:
        codebook 0 from the backbone state of the frame before; codebooks 1..K-1 from the decoder, run on
        a random `decoder_fraction` of those frames (at least one; all of them, in order, at 1.0)."""
        h = self.backbone(self.embed_frames(tokens, mask))
        rows, cols, targets = self.audio_targets(tokens, mask, lengths)
        c0_loss = F.cross_entropy(
            self.codebook0_head(h[rows, cols]).float(), targets[:, 0]
        )  # target frames only
        count = max(1, round(decoder_fraction * len(rows)))
        pick = (
            torch.arange(len(rows), device=tokens.device)
            if count >= len(rows)
            else torch.randperm(len(rows), generator=generator)[:count].to(tokens.device)
        )
        decoder_logits = self.decoder_logits(h[rows[pick], cols[pick]], targets[pick])
        decoder_loss = F.cross_entropy(
            decoder_logits.reshape(-1, self.cardinality).float(), targets[pick, 1:].reshape(-1)
        )
        return CSMOutput(c0_loss + decoder_loss, c0_loss, decoder_loss, len(rows), len(pick))

    @staticmethod
    def audio_targets(tokens: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor):
        """-> (rows, cols) [N] of the backbone states that predict an audio frame, and that frame's codes [N, K]."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        is_target = mask[:, 1:, :-1].any(-1) & (positions[None, 1:] < lengths[:, None])  # [B, S-1]
        rows, cols = is_target.nonzero(as_tuple=True)
        return rows, cols, tokens[rows, cols + 1, :-1]

    @torch.no_grad()
    def log_likelihood(
        self, tokens: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Summed log-probability (nats) of every audio frame's K codes, the end frame included, per sequence [B]."""
        h = self.backbone(self.embed_frames(tokens, mask))
        rows, cols, targets = self.audio_targets(tokens, mask, lengths)
        states = h[rows, cols]
        c0 = F.cross_entropy(self.codebook0_head(states).float(), targets[:, 0], reduction="none")
        rest = F.cross_entropy(
            self.decoder_logits(states, targets).transpose(1, 2).float(),
            targets[:, 1:],
            reduction="none",
        ).sum(1)
        return -torch.zeros(len(tokens), device=h.device).index_add(0, rows, c0 + rest)

    def decoder_logits(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder: backbone states h [N, D] and the frames' codes [N, K] -> logits of codebooks
        1..K-1 [N, K-1, cardinality]; decoder input j is h (j = 0) or the embedding of codebook j-1."""
        codebooks = torch.arange(self.num_codebooks - 1, device=codes.device)
        inputs = torch.cat(
            [h[:, None], self.embed_audio(codebooks, codes[:, :-1])], dim=1
        )  # [N, K, D]
        out = self.decoder(self.projection(inputs))[:, 1:]  # [N, K-1, D_dec]
        return torch.einsum("nkd,kdv->nkv", out, self.audio_head)

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        max_frames: int,
        temperature: float = 0.9,
        topk: int = 50,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue a one-sequence prompt (tokens, mask [1, S, K+1]) frame by frame until an all-zero frame or
        `max_frames`; returns codes [K, T] (the end frame excluded). With `use_cache` the backbone and the
        decoder keep KV caches (torchtune's), so each frame costs one backbone position and K decoder ones;
        without, every step re-runs both on their whole inputs (the reference check)."""
        start = tokens.shape[1]
        if start + max_frames > self.backbone.max_seq_len:
            raise ValueError(
                f"prompt ({start} frames) + max_frames ({max_frames}) exceeds the backbone's "
                f"max_seq_len ({self.backbone.max_seq_len})"
            )
        device, frames = tokens.device, []
        # the caches hold keys and values in the dtype they are computed in: autocast's, else the weights'
        autocast = torch.is_autocast_enabled(device.type)
        cache_dtype = torch.get_autocast_dtype(device.type) if autocast else self.audio_head.dtype
        with ExitStack() as caches:
            if use_cache:
                for net, length in (
                    (self.backbone, start + max_frames),
                    (self.decoder, self.num_codebooks),
                ):
                    caches.enter_context(
                        local_kv_cache(
                            net,
                            batch_size=1,
                            device=device,
                            dtype=cache_dtype,
                            decoder_max_seq_len=length,
                        )
                    )
            causal = torch.tril(
                torch.ones(start + max_frames, start + max_frames, dtype=torch.bool, device=device)
            )
            step_tokens, step_mask, positions = (
                tokens,
                mask,
                torch.arange(start, device=device)[None],
            )
            for _ in range(max_frames):
                if use_cache:
                    embeds = self.embed_frames(step_tokens, step_mask)
                    h = self.backbone(embeds, input_pos=positions, mask=causal[positions[0]][None])[
                        :, -1
                    ]
                else:
                    h = self.backbone(self.embed_frames(tokens, mask))[:, -1]
                frame = self.sample_frame(h, temperature, topk, generator)  # [1, K]
                if not frame.any():
                    break
                frames.append(frame[0])
                step_tokens = torch.cat([frame, torch.zeros_like(frame[:, :1])], dim=1)[
                    :, None
                ]  # [1, 1, K+1]
                step_mask = torch.ones_like(step_tokens, dtype=torch.bool)
                step_mask[..., -1] = False
                if use_cache:
                    positions = positions[:, -1:] + 1
                else:
                    tokens, mask = (
                        torch.cat([tokens, step_tokens], 1),
                        torch.cat([mask, step_mask], 1),
                    )
        return (
            torch.stack(frames, dim=1)
            if frames
            else torch.zeros(self.num_codebooks, 0, dtype=torch.long)
        )

    def sample_frame(
        self,
        h: torch.Tensor,
        temperature: float,
        topk: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Backbone state h [B, D] -> one frame of codes [B, K]: codebook 0 from `codebook0_head`, then the
        other codebooks from the decoder (`sample_acoustic`)."""
        h = h.to(
            self.codebook0_head.weight.dtype
        )  # torchtune returns float32 states from bf16 weights
        codebook0 = sample_topk(self.codebook0_head(h), topk, temperature, generator)
        return self.sample_acoustic(h, codebook0, temperature, topk, generator)

    def sample_acoustic(
        self,
        h: torch.Tensor,
        codebook0: torch.Tensor,
        temperature: float,
        topk: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Backbone states h [B, D] and their frames' codebook 0 [B, 1] -> the frames [B, K]: the decoder
        samples codebooks 1..K-1 one by one, incrementally when its KV cache is set up (restarted here)."""
        cached = self.decoder.caches_are_enabled()
        if cached:
            self.decoder.reset_caches()
        codes = [codebook0]
        inputs = torch.cat([h[:, None], self.embed_audio(0, codebook0)], dim=1)  # [B, 2, D]
        causal = torch.tril(
            torch.ones(self.num_codebooks, self.num_codebooks, dtype=torch.bool, device=h.device)
        )
        positions = torch.arange(2, device=h.device)[None].expand(h.shape[0], -1)
        for k in range(1, self.num_codebooks):
            if cached:
                out = self.decoder(
                    self.projection(inputs), input_pos=positions, mask=causal[positions[0]][None]
                )
                positions = positions[:, -1:] + 1
            else:
                out = self.decoder(self.projection(inputs))
            logits = out[:, -1].to(self.audio_head.dtype) @ self.audio_head[k - 1]
            codes.append(sample_topk(logits, topk, temperature, generator))
            step = self.embed_audio(k, codes[-1])
            inputs = step if cached else torch.cat([inputs, step], dim=1)
        return torch.cat(codes, dim=1)

    @torch.no_grad()
    def complete_codebook0(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        temperature: float = 0.9,
        topk: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One segment of text and true audio frames (tokens, mask [1, S, K+1]) -> codes [K, T]: each frame's
        own codebook 0, and codebooks 1..K-1 sampled by the decoder from the backbone state
        over the true text and frames before it (teacher-forced, as in training; the end frame left out).
        TTS with a backbone that never errs: what the decoder alone costs."""
        h = self.backbone(self.embed_frames(tokens, mask)).to(self.codebook0_head.weight.dtype)
        lengths = torch.tensor([tokens.shape[1]], device=tokens.device)
        rows, cols, targets = self.audio_targets(tokens, mask, lengths)
        states, codebook0 = h[rows, cols][:-1], targets[:-1, :1]
        return self.sample_acoustic(states, codebook0, temperature, topk, generator).T


def build_csm(
    text_vocab_size: int,
    cardinality: int,
    num_codebooks: int,
    backbone: dict,
    decoder: dict,
    init_device: str | None = None,
    pretrained_backbone: str | None = None,
    pretrained_path: str | None = None,
) -> CSM:
    """A `CSM` on `init_device` ("meta": shapes only, to inspect the published architecture). With
    `pretrained_backbone`, a local Hugging Face Llama folder (e.g. Llama-3.2-1B) of the backbone's sizes
    initialises the backbone, and the text embeddings too when the vocabularies match. With `pretrained_path`,
    a local CSM checkpoint of these sizes gives every weight: Sesame's release (a folder of config.json and
    model.safetensors, or ckpt.pt) or a transformers `CsmForConditionalGeneration` folder."""
    if pretrained_path is not None and (pretrained_backbone is not None or init_device == "meta"):
        raise ValueError(
            f"pretrained_path={pretrained_path} gives every weight: it takes neither pretrained_backbone "
            f"({pretrained_backbone}) nor init_device=meta ({init_device}), which holds no weights"
        )
    with torch.device(init_device or "cpu"):
        model = CSM(text_vocab_size, cardinality, num_codebooks, backbone, decoder)
    if pretrained_backbone is not None:
        load_hf_llama(model, pretrained_backbone, backbone)
    if pretrained_path is not None:
        from slmlab.convert.csm import load_pretrained  # slmlab.convert imports this module

        load_pretrained(model, pretrained_path)
    return model


def load_hf_llama(model: CSM, folder: str, sizes: dict) -> None:
    """Copy a transformers Llama checkpoint (safetensors in `folder`) into `model.backbone`, converted to
    torchtune's layout by torchtune's own `hf_to_tune`; its `embed_tokens` go to `model.text_embeddings`
    when the shapes match. Missing or unexpected backbone weights are an error."""
    from safetensors.torch import load_file
    from torchtune.models.convert_weights import hf_to_tune

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors in {folder}: expected a local Hugging Face Llama folder "
            "(slmlab never downloads)"
        )
    hf_state = {}
    for file in files:
        hf_state.update(load_file(str(file)))
    state = hf_to_tune(
        hf_state,
        num_heads=sizes["num_heads"],
        num_kv_heads=sizes["num_kv_heads"],
        dim=sizes["embed_dim"],
    )
    embeddings = state.pop("tok_embeddings.weight", None)
    state.pop("output.weight", None)
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not fit the backbone sizes {sizes}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    if (
        embeddings is not None
    ):  # the tokenizer may have grown (a pad token): copy the rows both vocabularies share
        rows = min(len(embeddings), model.text_embeddings.num_embeddings)
        if embeddings.shape[1] != model.text_embeddings.embedding_dim:
            raise ValueError(
                f"{folder}: embed_tokens width {embeddings.shape[1]} != backbone embed_dim"
            )
        model.text_embeddings.weight.data[:rows].copy_(embeddings[:rows])
        if rows != model.text_embeddings.num_embeddings:
            log.warning(
                "text embeddings: %d rows from %s, %d new rows left random",
                rows,
                folder,
                model.text_embeddings.num_embeddings - rows,
            )

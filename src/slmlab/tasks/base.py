"""The training logic every arm shares: optimiser and schedule from config, LM labels, text logging."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class SLMTask(L.LightningModule):
    """Subclasses build `self.net` and implement `training_step` / `validation_step`.

    optimizer: a partial (Hydra `_partial_: true`) taking the parameters; scheduler: a partial taking
    the optimizer, stepped every optimisation step (e.g. transformers' `get_cosine_schedule_with_warmup`).
    """

    def __init__(self, optimizer, scheduler=None) -> None:
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms and biases
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = self.optimizer_factory(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

    def log_text(self, tag: str, text: str) -> None:
        """A Markdown text sample in TensorBoard (ignored by other loggers)."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.global_rank == 0:
                logger.experiment.add_text(tag, text, self.global_step)

    @staticmethod
    def lm_labels(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L], lengths [B] -> (attention_mask [B, L], labels [B, L] with -100 on padding)."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return mask.long(), ids.masked_fill(~mask, -100)


def transformer_block_classes() -> set[type]:
    """FSDP wrap units (`strategy=fsdp`): the transformer blocks of every arm's networks (the text LMs
    and Spirit LM, CSM's torchtune backbone and decoder, SpeechLM's Whisper / wav2vec2 / HuBERT
    encoders and Qwen2 / Llama / GPT-2 decoders)."""
    from torchtune.modules import TransformerSelfAttentionLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.hubert.modeling_hubert import (
        HubertEncoderLayer,
        HubertEncoderLayerStableLayerNorm,
    )
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        Wav2Vec2EncoderLayer,
        Wav2Vec2EncoderLayerStableLayerNorm,
    )
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    return {
        LlamaDecoderLayer,
        Qwen2DecoderLayer,
        GPT2Block,
        WhisperEncoderLayer,
        Wav2Vec2EncoderLayer,
        Wav2Vec2EncoderLayerStableLayerNorm,
        HubertEncoderLayer,
        HubertEncoderLayerStableLayerNorm,
        TransformerSelfAttentionLayer,
    }

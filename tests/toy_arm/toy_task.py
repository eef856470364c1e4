"""A toy fourth arm, to show that adding an arm takes one task file and one model config
(`conf/model/bigram.yaml` beside this file), with no edit anywhere else: a bigram LM over the BPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmlab.data.batching import pad_stack
from slmlab.tasks.base import SLMTask


class Bigram(nn.Module):
    """The next token's logits from the current token alone: ids [B, L] -> logits [B, L, V]."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.next_token_logits = nn.Embedding(vocab_size, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.next_token_logits(ids)


class BigramTask(SLMTask):
    """batch["text_ids"]: [B, L] bos + BPE + eos; loss: next-token cross-entropy (nats per token)."""

    capabilities = frozenset({"score_texts"})

    def __init__(self, tokenizer, optimizer, scheduler=None) -> None:
        super().__init__(optimizer, scheduler)
        self.tokenizer = tokenizer
        self.net = Bigram(len(tokenizer))

    def token_log_likelihoods(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, L], lengths [B] -> the log-likelihood of each token after the first [B, L-1], 0 on padding."""
        _, labels = self.lm_labels(ids, lengths)
        targets = labels[:, 1:]
        losses = F.cross_entropy(
            self.net(ids[:, :-1]).transpose(1, 2), targets, reduction="none", ignore_index=-100
        )
        return -losses

    def _loss(self, batch: dict) -> torch.Tensor:
        ids, lengths = batch["text_ids"], batch["text_ids_lengths"]
        return -self.token_log_likelihoods(ids, lengths).sum() / (lengths - 1).sum()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), batch_size=len(batch["id"]))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch), batch_size=len(batch["id"]))

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> list[tuple[float, int]]:
        ids = [torch.tensor(self.tokenizer.encode(t, eos=False)) for t in texts]
        padded, lengths = pad_stack(ids, self.tokenizer.pad_id)
        scores = self.token_log_likelihoods(padded.to(self.device), lengths.to(self.device))
        return [(float(row.sum()), len(x) - 1) for row, x in zip(scores, ids)]

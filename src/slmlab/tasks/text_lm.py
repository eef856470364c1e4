"""`model=text_lm`: a causal LM over corpus transcripts, the text-only topline Spirit LM is compared with."""

from __future__ import annotations

import math

import torch

from slmlab.data.batching import pad_stack
from slmlab.tasks.base import SLMTask


class TextLMTask(SLMTask):
    """batch["text_ids"]: [B, L] bos + BPE + eos, padded; loss: next-token cross-entropy (nats/token)."""

    capabilities = frozenset({"score_texts"})

    def __init__(
        self,
        net,
        tokenizer,
        optimizer,
        scheduler=None,
        sample_prompts: int = 4,
        sample_tokens: int = 24,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.tokenizer = tokenizer
        self.net = net(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_id)
        self.sample_prompts, self.sample_tokens = sample_prompts, sample_tokens
        self._prompts: list[str] = []

    @classmethod
    def fsdp_block_classes(cls) -> set[type]:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return {LlamaDecoderLayer}

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask, labels = self.lm_labels(ids, lengths)
        return self.net(input_ids=ids, attention_mask=mask, labels=labels).loss

    def training_step(self, batch, batch_idx):
        loss = self(batch["text_ids"], batch["text_ids_lengths"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")
        if batch_idx == 0:
            self._prompts = [" ".join(t.split()[:2]) for t in batch["text"][: self.sample_prompts]]

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        """Token-weighted mean loss over the split; perplexity = exp(loss)."""
        loss = self(batch["text_ids"], batch["text_ids_lengths"])
        tokens = int((batch["text_ids_lengths"] - 1).sum())
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=tokens)

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")
        if self._prompts and not self.trainer.sanity_checking:
            self.log_text(
                "samples/val",
                "\n\n".join(f"**{p}** → {self.continue_text(p)}" for p in self._prompts),
            )

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")

    def _log_perplexity(self, stage: str) -> None:
        loss = self.trainer.callback_metrics.get(f"{stage}/loss")
        if loss is not None:
            self.log(f"{stage}/ppl", math.exp(min(float(loss), 50.0)), sync_dist=True)

    @torch.no_grad()
    def score_texts(self, texts: list[str], batch_size: int = 32) -> list[tuple[float, int]]:
        """Log-likelihood (nats) of each text's BPE tokens after bos (eos excluded), and their count."""
        scores = []
        for i in range(0, len(texts), batch_size):
            ids = [self.tokenizer.encode(t, eos=False) for t in texts[i : i + batch_size]]
            padded, lengths = pad_stack([torch.tensor(x) for x in ids], self.tokenizer.pad_id)
            mask, _ = self.lm_labels(padded.to(self.device), lengths.to(self.device))
            logits = (
                self.net(input_ids=padded.to(self.device), attention_mask=mask)
                .logits[:, :-1]
                .float()
            )
            logp = logits.log_softmax(-1).gather(-1, padded[:, 1:, None].to(self.device))[..., 0]
            scores += [(float(logp[j, : len(x) - 1].sum()), len(x) - 1) for j, x in enumerate(ids)]
        return scores

    @torch.no_grad()
    def continue_text(self, prompt: str) -> str:
        """Greedy continuation of `prompt` with transformers' `generate`, stopping at </s>."""
        ids = torch.tensor([self.tokenizer.encode(prompt, eos=False)], device=self.device)
        out = self.net.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.sample_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
        )
        return self.tokenizer.decode(out[0, ids.shape[1] :])

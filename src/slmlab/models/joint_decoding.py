"""Joint CTC/attention decoding (Watanabe et al., 2017; ESPnet's `ctc_weight` at decoding) for SpeechLM, as a
transformers `LogitsProcessor`, so that the decoder's own `generate` (greedy or beam search) runs it.

At each step every hypothesis keeps its decoder's `candidates` most likely next tokens (ESPnet's pre-beam) and
end-of-sequence; each is scored

    (1 - ctc_weight) x log p_decoder(token | prefix, audio)
        + ctc_weight x (log p_ctc(prefix + token) - log p_ctc(prefix))

where p_ctc(y) is the CTC prefix probability of y's characters under the encoder's CTC head (the probability
that the audio begins with them; for end-of-sequence, that it holds exactly them), and every other token is
ruled out. The CTC head reads the audio frame by frame, the decoder knows the language: together they
transcribe better than either when the decoder has learnt to read the audio only a little.

Replaces ESPnet's `CTCPrefixScoreTH` + `BatchBeamSearch`, for a character CTC head under a BPE decoder: a
token's characters extend the prefix one at a time, and prefix scores are cached by their character strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import LogitsProcessor

from slmlab.models.speechlm import frame_mask


class JointCTCDecoding(LogitsProcessor):
    """ctc_log_probs [B, T, V] (log-softmax of the CTC head, blank 0) and lengths [B] valid frames, for the B
    utterances of a `generate` call (each row of `input_ids` is utterance row // (rows / B));
    chars_of(ids) -> the CTC label ids (1..V-1) of the text those generated token ids decode to."""

    def __init__(
        self,
        ctc_log_probs: torch.Tensor,
        lengths: torch.Tensor,
        chars_of: Callable[[list[int]], tuple[int, ...]],
        eos_token_id: int,
        ctc_weight: float = 0.3,
        candidates: int = 16,
    ) -> None:
        if not 0 < ctc_weight <= 1:
            raise ValueError(f"ctc_weight must be in (0, 1], got {ctc_weight}")
        batch, frames, _ = ctc_log_probs.shape
        # past each end only blanks, at probability 1: the recursion carries each utterance's sums to frame T
        after = ~frame_mask(lengths.to(ctc_log_probs.device), frames)
        self.x = ctc_log_probs.float().masked_fill(after[..., None], float("-inf"))
        self.x[..., 0] = self.x[..., 0].masked_fill(after, 0.0)
        self.batch, self.chars_of, self.eos = batch, chars_of, eos_token_id
        self.weight, self.candidates = ctc_weight, candidates
        # (utterance, characters) -> (r_n [T], r_b [T], prefix and full log-probabilities as floats): the CTC
        # forward variables of the prefix ending at each frame in a non-blank / blank label
        no_label = torch.full((frames,), float("-inf"), device=self.x.device)
        blanks = self.x[..., 0].cumsum(1)
        self.cache = {
            (b, ()): (no_label, blanks[b], 0.0, blanks[b, -1].item()) for b in range(batch)
        }

    def prefix_score(self, item: int, chars: tuple[int, ...]) -> float:
        """log p_ctc(the audio of utterance `item` begins with `chars`)."""
        self._compute([(item, chars)])
        return self.cache[(item, chars)][2]

    def full_score(self, item: int, chars: tuple[int, ...]) -> float:
        """log p_ctc(the audio of utterance `item` holds exactly `chars`)."""
        self._compute([(item, chars)])
        return self.cache[(item, chars)][3]

    def _compute(self, keys: list[tuple[int, tuple[int, ...]]]) -> None:
        """Fill the cache for `keys` and their missing prefixes, one character at a time, batched over keys."""
        pending, queue = set(), list(keys)
        while queue:
            key = queue.pop()
            if key not in self.cache and key not in pending:
                pending.add(key)
                queue.append((key[0], key[1][:-1]))
        while pending:
            ready = [k for k in pending if (k[0], k[1][:-1]) in self.cache]
            parents = [self.cache[(k[0], k[1][:-1])] for k in ready]
            device = self.x.device
            r_n, r_b, psi = self._extend(
                torch.tensor([k[0] for k in ready], device=device),
                torch.stack([p[0] for p in parents]),
                torch.stack([p[1] for p in parents]),
                torch.tensor([k[1][-2] if len(k[1]) > 1 else -1 for k in ready], device=device),
                torch.tensor([k[1][-1] for k in ready], device=device),
            )
            full = torch.logaddexp(r_n[:, -1], r_b[:, -1]).tolist()
            for i, (key, prefix) in enumerate(zip(ready, psi.tolist())):
                self.cache[key] = (r_n[i], r_b[i], prefix, full[i])
            pending -= set(ready)

    def _extend(self, items, p_n, p_b, last, char):
        """The prefix recursion of Watanabe et al. (2017), Algorithm 2, for N prefixes at once: parents'
        r_n, r_b [N, T], their last characters [N] (-1: empty) and one more character each [N]
        -> the extended prefixes' r_n, r_b [N, T] and log-probabilities [N]."""
        x = self.x[items]  # [N, T, V]
        x_char = x.gather(2, char[:, None, None].expand(-1, x.shape[1], 1)).squeeze(2)
        x_blank = x[..., 0]
        r_n = torch.full_like(p_n, float("-inf"))
        r_b = torch.full_like(p_b, float("-inf"))
        r_n[:, 0] = torch.where(last < 0, x_char[:, 0], float("-inf"))
        psi = r_n[:, 0].clone()
        repeated = last == char  # a repeated character needs a blank between
        for t in range(1, x.shape[1]):
            phi = torch.where(
                repeated, p_b[:, t - 1], torch.logaddexp(p_b[:, t - 1], p_n[:, t - 1])
            )
            r_n[:, t] = torch.logaddexp(r_n[:, t - 1], phi) + x_char[:, t]
            r_b[:, t] = torch.logaddexp(r_b[:, t - 1], r_n[:, t - 1]) + x_blank[:, t]
            psi = torch.logaddexp(psi, phi + x_char[:, t])
        return r_n, r_b, psi

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids [R, n] generated so far, scores [R, V] (logits or log-probs) -> joint scores [R, V]."""
        log_probs = scores.float().log_softmax(-1)
        rows = input_ids.shape[0]
        per_item = rows // self.batch
        top = log_probs.topk(min(self.candidates, log_probs.shape[-1]), -1).indices.tolist()
        wanted = []  # (row, token, item, prefix chars, new chars or None for end-of-sequence)
        for row in range(rows):
            prefix = input_ids[row].tolist()
            item, old = row // per_item, self.chars_of(prefix)
            for token in {*top[row], self.eos}:
                new = None if token == self.eos else self.chars_of(prefix + [token])
                wanted.append((row, token, item, old, new))
        self._compute(
            [
                (item, chars)
                for _, _, item, old, new in wanted
                for chars in (old, new)
                if chars is not None
            ]
        )
        gains = []
        for _, _, item, old, new in wanted:
            _, _, before, full = self.cache[(item, old)]
            after = full if new is None else self.cache[(item, new)][2]
            # a prefix CTC already rules out (a greedy row past what the audio holds): the decoder alone
            gains.append(after - before if math.isfinite(before) else 0.0)
        rows_of, tokens_of = (torch.tensor(column) for column in list(zip(*wanted))[:2])
        joint = torch.full_like(log_probs, float("-inf"))
        joint[rows_of, tokens_of] = (1 - self.weight) * log_probs[
            rows_of, tokens_of
        ] + self.weight * torch.tensor(gains, device=log_probs.device)
        return joint.to(scores.dtype)

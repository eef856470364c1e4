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
token's characters extend the prefix one at a time (all of them, for every candidate, in one pass over the
frames), and prefix scores are cached by their character strings.
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
    chars_of(sequences) -> for each list of generated token ids, the CTC label ids (1..V-1) of the text it
    decodes to (called once per step, for every hypothesis and candidate at once)."""

    def __init__(
        self,
        ctc_log_probs: torch.Tensor,
        lengths: torch.Tensor,
        chars_of: Callable[[list[list[int]]], list[tuple[int, ...]]],
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
        self.empty = {
            (b, ()): (no_label, blanks[b], 0.0, blanks[b, -1].item()) for b in range(batch)
        }
        self.cache = dict(self.empty)

    def prefix_score(self, item: int, chars: tuple[int, ...]) -> float:
        """log p_ctc(the audio of utterance `item` begins with `chars`)."""
        self._compute([(item, chars)])
        return self.cache[(item, chars)][2]

    def full_score(self, item: int, chars: tuple[int, ...]) -> float:
        """log p_ctc(the audio of utterance `item` holds exactly `chars`)."""
        self._compute([(item, chars)])
        return self.cache[(item, chars)][3]

    def _compute(self, keys: list[tuple[int, tuple[int, ...]]]) -> None:
        """Fill the cache for `keys`, each extended from its longest cached prefix in one pass over the frames:
        a key's k missing characters are k levels of the recursion, and level j at frame t needs only level
        j - 1 at frame t - 1, so all levels of all keys advance together, frame by frame."""
        extend = {}  # key -> the length of its longest cached prefix
        for item, chars in dict.fromkeys(keys):
            if (item, chars) not in self.cache:
                known = len(chars) - 1
                while (item, chars[:known]) not in self.cache:
                    known -= 1
                extend[(item, chars)] = known
        if not extend:
            return
        news = [chars[known:] for (_, chars), known in extend.items()]
        levels = max(map(len, news))
        device, frames = self.x.device, self.x.shape[1]
        # levels past a key's own are computed, not kept
        pad = [(1,) * (levels - len(new)) for new in news]
        char = torch.tensor([new + rest for new, rest in zip(news, pad)], device=device)
        last = torch.tensor(
            [
                ((chars[known - 1],) if known else (-1,)) + new[:-1] + rest
                for ((_, chars), known), new, rest in zip(extend.items(), news, pad)
            ],
            device=device,
        )
        items = torch.tensor([item for item, _ in extend], device=device)
        parents = [self.cache[(item, chars[:known])] for (item, chars), known in extend.items()]
        # r_n, r_b [T, N, 1 + levels]: level 0 the cached prefix, level j its j-th new character
        r_n = torch.full((frames, len(extend), 1 + levels), float("-inf"), device=device)
        r_b = torch.full_like(r_n, float("-inf"))
        r_n[:, :, 0] = torch.stack([p[0] for p in parents], 1)
        r_b[:, :, 0] = torch.stack([p[1] for p in parents], 1)
        frame = torch.arange(frames, device=device)
        x_char = self.x[items[:, None, None], frame[:, None], char[:, None]].transpose(0, 1)
        x_blank = self.x[items, :, 0].T[..., None]  # [T, N, 1]
        r_n[0, :, 1] = torch.where(last[:, 0] < 0, x_char[0, :, 0], float("-inf"))
        repeated = last == char  # a repeated character needs a blank between
        # phi[t]: the parent's mass at frame t - 1 that may move on at t
        phi = torch.empty_like(x_char)
        for t in range(1, frames):
            before_n, before_b = r_n[t - 1, :, :-1], r_b[t - 1, :, :-1]
            phi[t] = torch.where(repeated, before_b, torch.logaddexp(before_b, before_n))
            r_n[t, :, 1:] = torch.logaddexp(r_n[t - 1, :, 1:], phi[t]) + x_char[t]
            r_b[t, :, 1:] = torch.logaddexp(r_b[t - 1, :, 1:], r_n[t - 1, :, 1:]) + x_blank[t]
        # each key's own last level: the only one a later step extends or reads
        every = torch.arange(len(extend), device=device)
        own = torch.tensor(list(map(len, news)), device=device)
        psi = torch.logaddexp(r_n[0, :, 1:], (phi[1:] + x_char[1:]).logsumexp(0))
        psi = psi[every, own - 1].tolist()
        full = torch.logaddexp(r_n[-1], r_b[-1])[every, own].tolist()
        r_n, r_b = r_n[:, every, own].T.contiguous(), r_b[:, every, own].T.contiguous()
        for n, key in enumerate(extend):
            self.cache[key] = (r_n[n], r_b[n], psi[n], full[n])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids [R, n] generated so far, scores [R, V] (logits or log-probs) -> joint scores [R, V]."""
        log_probs = scores.float().log_softmax(-1)
        rows = input_ids.shape[0]
        per_item = rows // self.batch
        top = log_probs.topk(min(self.candidates, log_probs.shape[-1]), -1).indices.tolist()
        prefixes = input_ids.tolist()
        candidates = [(row, token) for row in range(rows) for token in {*top[row], self.eos}]
        chars = self.chars_of(
            prefixes + [prefixes[row] + [token] for row, token in candidates if token != self.eos]
        )
        old = [(row // per_item, c) for row, c in enumerate(chars[:rows])]
        # a hypothesis only extends its own prefix: what earlier steps cached for others is let go
        self.cache = {**self.empty, **{key: self.cache[key] for key in old if key in self.cache}}
        extended = iter(chars[rows:])
        new = [None if token == self.eos else next(extended) for _, token in candidates]
        self._compute(
            old + [(row // per_item, c) for (row, _), c in zip(candidates, new) if c is not None]
        )
        gains = []
        for (row, _), chars_after in zip(candidates, new):
            key = old[row]
            _, _, before, full = self.cache[key]
            after = full if chars_after is None else self.cache[(key[0], chars_after)][2]
            # a prefix CTC already rules out (a greedy row past what the audio holds): the decoder alone
            gains.append(after - before if math.isfinite(before) else 0.0)
        rows_of, tokens_of = (torch.tensor(column) for column in zip(*candidates))
        joint = torch.full_like(log_probs, float("-inf"))
        joint[rows_of, tokens_of] = (1 - self.weight) * log_probs[
            rows_of, tokens_of
        ] + self.weight * torch.tensor(gains, device=log_probs.device)
        return joint.to(scores.dtype)

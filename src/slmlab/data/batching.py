"""Length-bucketed batches (the usual speech-toolkit bucketing: ESPnet's and NeMo's samplers) and padding."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of utterances of similar length, reshuffled every epoch, split across DDP ranks.

    lengths: one int per item (tokens or frames). A batch holds at most `batch_size` items and, when
    `max_tokens` is set, at most `max_tokens` padded positions (longest item x batch size). Items are
    sorted by length inside windows of `bucket_batches` batches, so batches stay random but tight.
    Every rank gets the same number of batches (the list is padded by repeating batches).
    A resumed run calls `resume(epoch, batches_done)`: its next iteration starts that epoch past the
    batches already trained on (Lightning 2.x does not fast-forward a map-style sampler itself).
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        max_tokens: int | None = None,
        shuffle: bool = True,
        bucket_batches: int = 50,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths, self.batch_size, self.max_tokens = list(lengths), batch_size, max_tokens
        self.shuffle, self.bucket_batches, self.seed = shuffle, bucket_batches, seed
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.skip = 0  # batches of this rank's next iteration already trained on (a resumed run)
        # Lightning calls set_epoch on a loader's `batch_sampler.sampler`, never on a batch sampler
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:  # at the start of every epoch (`self.sampler`)
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration the rest of `epoch`, whose first `batches_done` batches of this rank
        were trained on (the next epoch, whole, when it has no more)."""
        self.epoch, self.skip = epoch, batches_done
        if batches_done >= len(self):
            self.epoch, self.skip = epoch + 1, 0

    def _all_batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        window = self.batch_size * self.bucket_batches if self.shuffle else len(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batch: list[int] = []
            for i in chunk:  # ascending, so item i is the longest of the batch it joins
                if batch and (
                    len(batch) == self.batch_size
                    or (
                        self.max_tokens is not None
                        and self.lengths[i] * (len(batch) + 1) > self.max_tokens
                    )
                ):
                    batches.append(batch)
                    batch = []
                batch.append(i)
            if batch:
                batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        if len(batches) % self.num_replicas:
            batches += batches[: self.num_replicas - len(batches) % self.num_replicas]
        return batches

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(self._all_batches()[self.rank :: self.num_replicas][skip:])

    def __len__(self) -> int:
        return len(self._all_batches()) // self.num_replicas


def pad_stack(tensors: list[torch.Tensor], pad_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, ...] tensors -> ([B, L_max, ...] padded on the right, lengths [B])."""
    lengths = torch.tensor([t.shape[0] for t in tensors])
    out = tensors[0].new_full((len(tensors), int(lengths.max()), *tensors[0].shape[1:]), pad_value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, lengths

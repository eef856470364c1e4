"""A test-only Lightning callback, added to a CLI run with
`+callbacks.record._target_=record_training.RecordTraining +callbacks.record.output_dir=DIR` and
`PYTHONPATH=tests/helpers`: each rank writes what it trained on and what it ended with, so a test can
check a DDP run or a sweep from outside the process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class RecordTraining(L.Callback):
    """Writes `<output_dir>/rank<r>.json`: the utterance ids of every training batch by epoch, the
    optimiser's learning rate at the first step, and a SHA-256 of the final parameters."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.batches: dict[int, list[list[str]]] = {}
        self.first_lr: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.setdefault(trainer.current_epoch, []).append(list(batch["id"]))
        if self.first_lr is None:
            self.first_lr = trainer.optimizers[0].param_groups[0]["initial_lr"]

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "world_size": trainer.world_size,
                    "batches": self.batches,
                    "first_lr": self.first_lr,
                    "parameters_sha256": digest.hexdigest(),
                }
            )
        )

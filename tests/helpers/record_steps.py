"""A test-only Lightning callback, added to a run with
`+callbacks.steps._target_=record_steps.RecordSteps +callbacks.steps.output_dir=DIR` (and
`PYTHONPATH=tests/helpers` for a CLI run): one JSON line per training step, written at once, so that a
test reads what a run did up to the moment it was killed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


class RecordSteps(L.Callback):
    """Appends `{"step", "loss", "ids"}` per training step (the global step after it, the loss as the
    step computed it, the utterance ids of its batch) to `<output_dir>/steps-<pid>-rank<r>.jsonl`.
    With `stall_at_step=N` the process stops before the step after N, writing `<output_dir>/stalled`,
    for the test to kill it there."""

    def __init__(self, output_dir: str, stall_at_step: int | None = None) -> None:
        self.output_dir, self.stall_at_step = Path(output_dir), stall_at_step
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.stall_at_step:
            (self.output_dir / "stalled").write_text(str(os.getpid()))
            time.sleep(3600)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        line = {"step": trainer.global_step, "loss": float(loss), "ids": list(batch["id"])}
        path = self.output_dir / f"steps-{os.getpid()}-rank{trainer.global_rank}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")

"""A test-only Lightning callback for the cluster tests, added to a run with
`+callbacks.probe._target_=slurm_probe.SlurmProbe +callbacks.probe.output_dir=DIR` and
`PYTHONPATH=tests/cluster` (sbatch passes it on to the job): each rank appends to
`<output_dir>/rank<r>.jsonl`, as it trains, so that a test can follow a SLURM job from outside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L


class SlurmProbe(L.Callback):
    """Line 1 of each attempt: who this process is (Lightning's rank and world size, its cluster
    environment, SLURM's job id, task id and restart count); then one line per optimisation step:
    `{"step": global step after it, "restart": SLURM_RESTART_COUNT}`, flushed at once."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.restart = int(os.environ.get("SLURM_RESTART_COUNT", 0))

    def _append(self, trainer, record: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / f"rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)  # DDP's
        self._append(
            trainer,
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "cluster_environment": type(environment).__name__,
                "pid": os.getpid(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_procid": os.environ.get("SLURM_PROCID"),
                "restart": self.restart,
                "start_step": trainer.global_step,
            },
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._append(trainer, {"step": trainer.global_step, "restart": self.restart})

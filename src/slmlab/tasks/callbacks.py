"""Callbacks shared by every arm (the rest come from Lightning: checkpoints, LR monitor, throughput)."""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)


def batch_size(batch: dict) -> int:
    """For Lightning's ThroughputMonitor: utterances in a batch."""
    return len(batch["id"])


def batch_tokens(batch: dict) -> int:
    """For Lightning's ThroughputMonitor: the model's non-padding input positions, which a task that builds
    its own sequences records in `batch["num_tokens"]` during its training step; otherwise the non-padding
    positions of the batch's first field."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    return int(next(v for k, v in batch.items() if k.endswith("_lengths")).sum())


class MetricsJson(L.Callback):
    """Writes `metrics.json` into the run folder when fitting ends, and again after a validation or
    test run: the logged metrics, steps, wall time, training throughput (tokens/s, whole run),
    parameter count, peak memory and the data summary (records kept and skipped per split)."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.tokens, self.train_seconds, self._t0, self.start_step = 0, 0.0, None, 0

    def on_fit_start(self, trainer, pl_module) -> None:
        _reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step  # > 0 when resumed from a checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._t0
        self.tokens += batch_tokens(batch)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if (
            trainer.state.fn == "validate"
        ):  # a validation run after fitting (on the best checkpoint)
            self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        previous = json.loads(self.path.read_text())["metrics"] if self.path.is_file() else {}
        metrics = previous | {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if torch.is_tensor(v) or isinstance(v, float)
        }
        datamodule = trainer.datamodule
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _peak_rss_bytes()
        record = {
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())},
            "global_step": trainer.global_step,
            "start_step": self.start_step,
            "epochs": trainer.current_epoch,
            "train_seconds": round(self.train_seconds, 2),
            "train_tokens_per_second": round(
                self.tokens * trainer.world_size / max(self.train_seconds, 1e-9), 1
            ),
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "peak_memory_bytes": peak,
            "world_size": trainer.world_size,
            "data": datamodule.summary() if hasattr(datamodule, "summary") else {},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record, indent=2) + "\n")


def _reset_peak_rss() -> None:
    """Start the process's peak-RSS count afresh (Linux): a worker of a parallel sweep runs several jobs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident memory since the last reset (Linux's VmHWM), else since the process started."""
    try:
        line = next(
            x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:")
        )
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ProgressLog(L.Callback):
    """One log line every `every` steps and after each validation (step, losses, elapsed minutes, run name):
    readable when several jobs share a terminal, where progress bars would interleave."""

    def __init__(self, name: str, every: int = 100) -> None:
        self.name, self.every, self.started = name, every, time.perf_counter()

    def _line(self, trainer, prefix: str) -> None:
        if trainer.global_rank == 0 and not trainer.sanity_checking:
            losses = ", ".join(
                f"{k} {float(v):.3f}"
                for k, v in sorted(trainer.callback_metrics.items())
                if k.startswith(prefix) and k.endswith("loss")
            )
            minutes = (time.perf_counter() - self.started) / 60
            log.info(
                "[%s] step %d/%d, %.1f min: %s",
                self.name,
                trainer.global_step,
                trainer.max_steps,
                minutes,
                losses,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._line(trainer, "train/")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._line(trainer, "val/")

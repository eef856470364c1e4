"""Callbacks shared by every arm (the rest come from Lightning: checkpoints, LR monitor, throughput), and
the checkpoint writer (`AtomicCheckpointIO`, a `trainer.plugins` entry)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

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


# -- checkpoints a run resumes from exactly ---------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to `<name>.tmp-<pid>` beside it, then renames it over `<name>` (`os.replace`),
    so that a process killed mid-save (`kill -9`, a preempted job) leaves the previous checkpoint whole,
    never a truncated one. Lightning's own `_atomic_save` only buffers the checkpoint in memory: it then
    writes it through fsspec to a file in the system's temporary folder and moves that over `<name>`,
    which is a copy (truncated when killed) wherever that folder is on another file system than the
    run's, as on a cluster. Local (or mounted) paths."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint every `every_n_train_steps` optimisation steps whatever validation
    finds (after the validation of that step, where there is one), and at the run's last step, so that
    `last.ckpt` always holds the latest of those states (ModelCheckpoint alone skips a last step that is
    not a multiple of the interval). With `save_top_k: 0` it keeps `last.ckpt` only."""

    def __init__(self, every_n_train_steps: int, **kwargs) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int):
            raise ValueError(
                f"callbacks.periodic_checkpoint.every_n_train_steps={every_n_train_steps!r}: not an "
                "integer number of steps (by default it is trainer.val_check_interval); set it"
            )
        if every_n_train_steps < 1:
            raise ValueError(
                f"callbacks.periodic_checkpoint.every_n_train_steps={every_n_train_steps}: must be >= 1"
            )
        super().__init__(every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_step = trainer.global_step >= trainer.max_steps > 0
        due = trainer.global_step % self._every_n_train_steps == 0 or last_step
        loop = trainer.fit_loop
        if due and loop.epoch_loop._should_check_val_fx(loop._data_fetcher):  # Lightning's own test
            # a validation follows: save after it (ModelCheckpoint.on_validation_end), so that the
            # checkpoint holds what it found (the best checkpoint so far), as a resumed run does not
            # validate that step again
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if last_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def task_generators(pl_module) -> dict:
    """The task's own generators: its attributes holding a `torch.Generator` or a `random.Random`
    (csm's frame sampler, spiritlm's span sampler)."""
    return {
        name: value
        for name, value in vars(pl_module).items()
        if isinstance(value, (torch.Generator, random.Random))
    }


def generator_states(pl_module) -> dict:
    """The state of every generator a training step may draw from: torch's (CPU, and CUDA once in use),
    Python's `random`, numpy's global one and the task's own. Tensors and plain data, so that a
    checkpoint still loads with weights_only=True (Lightning's `_collect_rng_states` keeps numpy's as an
    ndarray, which that refuses)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "task": {
            name: g.get_state() if isinstance(g, torch.Generator) else g.getstate()
            for name, g in task_generators(pl_module).items()
        },
    }
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_generator_states(pl_module, states: dict) -> None:
    """Put back the states `generator_states` took."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    )
    generators = task_generators(pl_module)
    for name, state in states["task"].items():
        if isinstance(generators[name], torch.Generator):
            generators[name].set_state(state)
        else:
            generators[name].setstate(state)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class GeneratorStates(L.Callback):
    """Exact resume: each checkpoint holds every rank's generator states (`generator_states`), which a
    run resumed from it puts back right before its first training step; and validation draws from them
    without moving them, so that training draws the same numbers whether or not (and wherever) a run
    validated, and a resumed run (which does not repeat the validation of the step it resumes at)
    continues the same streams."""

    KEY = "generator_states"  # in the checkpoint: one entry per rank

    def __init__(self) -> None:
        self.to_restore: dict | None = None
        self.outside_validation: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = generator_states(pl_module)  # every rank builds the checkpoint; rank 0 writes it
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
            checkpoint[self.KEY] = gathered
        else:
            checkpoint[self.KEY] = [states]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get(self.KEY)
        if saved is None or len(saved) != trainer.world_size:
            log.warning(
                "the checkpoint holds no generator states for %d ranks (%s): the generators go on "
                "from the seed, so the resumed run draws other numbers than the run it continues",
                trainer.world_size,
                "none" if saved is None else f"{len(saved)} ranks",
            )
            return
        self.to_restore = saved[trainer.global_rank]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.to_restore is not None:
            set_generator_states(pl_module, self.to_restore)
            self.to_restore = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.outside_validation = generator_states(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        set_generator_states(pl_module, self.outside_validation)

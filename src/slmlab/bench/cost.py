"""train_cost: each arm of the comparison study trained alone, outside the sweep, one fresh process per arm.

Every arm is composed as `experiment=compare_tiny model=<arm>` (its sizes, batch, seed, threads) and
trained with its own Lightning step (forward, backward, clipping, AdamW, schedule) for `warmup` untimed
and `steps` timed steps on the same corpus, each arm batching it with its own sampler. Per arm:

- memory, the arm's own: on GPU the allocator's peak (`torch.cuda.max_memory_allocated`, reset before
  training: weights, gradients, optimiser state, activations); on CPU the growth of the process's peak
  resident memory from just before training (imports done, data loaded, model built) to its end, so the
  weights themselves are not in it (`weight_bytes` gives them);
- speed in the arm's own tokens per second (`token`: what one is) and in one common unit, seconds of
  training audio per second: the summed durations of the batch's utterances (text_lm reads the
  transcripts of the same utterances; their audio duration is counted alike);
- model FLOPs per step as 6 x N x tokens (`slmlab.tasks.base.training_flops`, the formula training logs
  MFU with: Kaplan et al. 2020, forward and backward of a dense transformer, no attention term;
  N = parameters outside embedding tables, tokens = the arm's own),
  and, as a check on that formula, the FLOPs torch's `FlopCounterMode` counts (matmuls, convolutions,
  attention) on the first warm-up step, per token. They differ where positions are not the arm's tokens:
  SpeechLM's encoder runs at 50 Hz on mel frames, CSM's depth decoder on 1/16 of the frames.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from slmlab.runs import build, compose
from slmlab.tasks.base import FLOPS_FORMULA, dense_parameters, training_flops
from slmlab.tasks.callbacks import batch_tokens

ARMS = ("text_lm", "spiritlm_base", "spiritlm_expressive", "csm", "speechlm")
TOKEN = {
    "text_lm": "BPE tokens",
    "spiritlm_base": "LM tokens (interleaved BPE and units)",
    "spiritlm_expressive": "LM tokens (interleaved BPE, units, pitch, style)",
    "csm": "backbone frames (text token or K codes)",
    "speechlm": "LM positions (audio embeddings and BPE)",
}


def train_cost(
    steps: int = 10, arms: tuple[str, ...] = ARMS, overrides: list[str] = (), warmup: int = 2
) -> list[dict]:
    """One row per arm, each measured in a fresh (spawned) process, one arm at a time."""
    rows = []
    for arm in arms:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as process:
            rows.append(process.submit(measure_arm, arm, steps, list(overrides), warmup).result())
    return rows


class MemoryGrowth:
    """Bytes: on GPU the allocator's peak since `start()` (`max_memory_allocated`; all that is allocated
    counts, the process being fresh); on CPU the resident set's peak since `start()` minus the resident
    set then (Linux: VmHWM, reset through /proc/self/clear_refs, as ru_maxrss cannot be)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.baseline = _status_bytes("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        return _status_bytes("VmHWM") - self.baseline


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line")


class StepCost(L.Callback):
    """Wall time, own tokens and audio seconds of each training step after the first `warmup`; FLOPs
    counted on the first step. `durations`: utterance id -> seconds."""

    def __init__(self, durations: dict[str, float], warmup: int) -> None:
        self.durations, self.warmup, self.step = durations, warmup, 0
        self.seconds, self.tokens, self.audio_seconds = [], [], []
        self.counter = FlopCounterMode(display=False)

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        if self.step == 0:
            self.counter.__enter__()
        _synchronize()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        _synchronize()
        seconds = time.perf_counter() - self.t0
        if self.step == 0:
            self.counter.__exit__(None, None, None)
            self.counted_flops_per_token = self.counter.get_total_flops() / batch_tokens(batch)
        if self.step >= self.warmup:
            self.seconds.append(seconds)
            self.tokens.append(batch_tokens(batch))
            self.audio_seconds.append(sum(self.durations[i] for i in batch["id"]))
        self.step += 1


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_arm(arm: str, steps: int, overrides: list[str], warmup: int = 2) -> dict:
    """Train `arm` for warmup + steps steps in this process and measure it (run in a fresh process)."""
    cfg = compose("train", ["experiment=compare_tiny", f"model={arm}", *overrides])
    L.seed_everything(cfg.seed)
    datamodule, task = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    durations = {r.id: r.duration for r in datamodule.datasets["train"].records}
    cost = StepCost(durations, warmup)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as root:
        trainer = instantiate(
            cfg.trainer,
            default_root_dir=root,
            max_steps=warmup + steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            callbacks=[cost],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        memory = MemoryGrowth(cuda)
        memory.start()
        trainer.fit(task, datamodule=datamodule)
        memory_bytes = memory.peak()
    dense = dense_parameters(task)
    seconds, tokens = sum(cost.seconds), statistics.mean(cost.tokens)
    return {
        "benchmark": "train_cost",
        "setting": arm,
        "unit": "audio s/s",
        "ours": sum(cost.audio_seconds) / seconds,
        "baseline": None,
        "ratio": None,
        "token": TOKEN[arm],
        "tokens_per_second": sum(cost.tokens) / seconds,
        "tokens_per_step": tokens,
        "audio_seconds_per_step": statistics.mean(cost.audio_seconds),
        "step_ms_median": 1000 * statistics.median(cost.seconds),
        "memory_bytes": memory_bytes,
        "memory": "CUDA allocator peak" if cuda else "growth of peak RSS during training",
        "weight_bytes": sum(p.numel() * p.element_size() for p in task.parameters()),
        "parameters": sum(p.numel() for p in task.parameters()),
        "dense_parameters": dense,
        "model_flops_per_step": training_flops(dense, tokens),
        "flops_formula": FLOPS_FORMULA,
        "counted_flops_per_token": cost.counted_flops_per_token,
        "steps": steps,
        "warmup_steps": warmup,
        "batch_size": cfg.datamodule.batch_size,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "summary": (
            f"{sum(cost.tokens) / seconds:,.0f} tokens/s ({TOKEN[arm]}), "
            f"{training_flops(dense, tokens) / 1e9:.2f} GFLOP/step (6ND), {memory_bytes / 2**20:.1f} MiB"
        ),
    }

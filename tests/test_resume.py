"""Resume: `last.ckpt` holds the last step, checkpoints are written atomically, a run relaunched into
its own folder continues from it (`resume=auto`) or starts again (`resume=never`), and a run killed
with SIGKILL and relaunched trains on the same batches, in the same order, with bit-equal losses (CPU,
fp32) as the same run never interrupted."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf

from slmlab.artifacts import UnreadableFileError
from slmlab.config_checks import ConfigError
from slmlab.data.batching import LengthBucketBatchSampler
from slmlab.runs import REPO_ROOT, compose, resume_checkpoint, train
from slmlab.tasks.callbacks import AtomicCheckpointIO, GeneratorStates, set_generator_states

HELPERS = Path(__file__).parent / "helpers"

# one thread, so that a run in this process and one in a subprocess compute the same bits
RUN = ["test=false", "threads=1"]


def last_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def read_steps(path: Path) -> list[dict]:
    """The lines one run wrote (tests/helpers/record_steps.py), in order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def record_steps(folder: Path, stall_at_step: int | None = None) -> list[str]:
    """The overrides that add tests/helpers/record_steps.py's callback, writing into `folder`."""
    stall = [f"+callbacks.steps.stall_at_step={stall_at_step}"] if stall_at_step else []
    return [
        "+callbacks.steps._target_=record_steps.RecordSteps",
        f"+callbacks.steps.output_dir={folder}",
        *stall,
    ]


def test_last_ckpt_holds_the_last_step(tiny_corpus, make_cfg, tmp_path):
    # checkpoints every 20 steps (the validation interval) and at step 25, the last
    train(make_cfg("experiment=tiny_text_lm", *RUN, "trainer.max_steps=25"))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert last_step(tmp_path / "run") == 25
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step000020.ckpt"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def save_half_then_fail(obj, f) -> None:  # as a full disk, or a process killed mid-write
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no partial file left beside it


def test_resume_auto_continues_in_the_run_folder_and_never_starts_again(
    tiny_corpus, make_cfg, tmp_path, caplog
):
    run = tmp_path / "run"
    train(make_cfg("experiment=tiny_text_lm", *RUN, "trainer.max_steps=20"))
    # saved after the step-20 validation, which the resumed run does not repeat: it knows its best
    states = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"].values()
    (best,) = [state["best_model_path"] for state in states if state.get("monitor") == "val/loss"]
    assert best == str(run / "checkpoints" / "step000020.ckpt")
    caplog.set_level("INFO", logger="slmlab.runs")
    train(make_cfg("experiment=tiny_text_lm", *RUN, "trainer.max_steps=30"))
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} at step 20" in caplog.text
    metrics = (run / "metrics.json").read_text()
    assert '"start_step": 20' in metrics and '"global_step": 30' in metrics
    assert last_step(run) == 30

    caplog.clear()
    train(make_cfg("experiment=tiny_text_lm", *RUN, "trainer.max_steps=10", "resume=never"))
    assert "resuming" not in caplog.text
    metrics = (run / "metrics.json").read_text()
    assert '"start_step": 0' in metrics and '"global_step": 10' in metrics
    assert last_step(run) == 10


def test_the_checkpoint_to_resume_from_is_the_latest_of_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 10}, run / "checkpoints" / "last.ckpt")

    def cfg(**keys):
        return OmegaConf.create({"paths": {"output_dir": str(run)}, "ckpt_path": None, **keys})

    assert resume_checkpoint(cfg()) == str(run / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(cfg(resume="never")) is None
    torch.save(
        {"global_step": 12}, run / "hpc_ckpt_1.ckpt"
    )  # Lightning's SLURM requeue, further on
    assert resume_checkpoint(cfg()) == str(run / "hpc_ckpt_1.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"global_step": 3}, other)
    assert resume_checkpoint(cfg(ckpt_path=str(other))) == str(other)  # a given one wins
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UnreadableFileError, match="last.ckpt is truncated or corrupt"):
        resume_checkpoint(cfg())


def test_the_resume_settings_are_checked(make_cfg):
    with pytest.raises(ConfigError, match=r"resume='sometimes': .*auto \| never"):
        compose("train", ["resume=sometimes"])
    with pytest.raises(ConfigError, match=r"every_n_train_steps=0: .*>= 1"):
        compose("train", ["callbacks.periodic_checkpoint.every_n_train_steps=0"])
    # by default every validation interval, which must then be a number of steps
    cfg = make_cfg("trainer.val_check_interval=0.5")
    with pytest.raises(Exception, match=r"every_n_train_steps=0.5: not an integer"):
        instantiate(cfg.callbacks.periodic_checkpoint)


def test_the_sampler_resumes_past_the_batches_each_rank_trained_on():
    lengths = [(7 * i) % 23 + 1 for i in range(40)]

    def epoch(epoch: int, rank: int = 0, replicas: int = 1) -> list[list[int]]:
        sampler = LengthBucketBatchSampler(lengths, 4, num_replicas=replicas, rank=rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    for rank in (0, 1):  # 10 batches an epoch: 5 per rank, of which 2 were trained on
        sampler = LengthBucketBatchSampler(lengths, 4, num_replicas=2, rank=rank)
        sampler.resume(epoch=3, batches_done=2)
        assert list(sampler) == epoch(3, rank, 2)[2:]
        sampler.set_epoch(4)
        assert list(sampler) == epoch(4, rank, 2)  # the next epoch whole
    sampler = LengthBucketBatchSampler(lengths, 4)
    sampler.resume(epoch=3, batches_done=10)  # a checkpoint at the end of epoch 3
    assert list(sampler) == epoch(4)


class TaskWithGenerators(torch.nn.Module):  # as csm's and spiritlm's tasks keep theirs
    def __init__(self) -> None:
        super().__init__()
        self.generator, self.rng = torch.Generator().manual_seed(1), random.Random(2)


def draws(task: TaskWithGenerators) -> list:
    """A number from each generator a training step may draw from."""
    return [
        torch.rand(2).tolist(),
        random.random(),
        float(np.random.rand()),
        torch.rand(2, generator=task.generator).tolist(),
        task.rng.random(),
    ]


def test_generator_states_come_back_from_a_checkpoint_and_validation_leaves_them_alone():
    task, trainer, callback = (
        TaskWithGenerators(),
        SimpleNamespace(world_size=1, global_rank=0),
        GeneratorStates(),
    )
    checkpoint = {}
    callback.on_save_checkpoint(trainer, task, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    expected = draws(task)
    draws(task)  # the killed run went on drawing
    callback.on_load_checkpoint(trainer, task, checkpoint)
    callback.on_train_batch_start(trainer, task, batch=None, batch_idx=0)
    assert draws(task) == expected

    set_generator_states(task, checkpoint[GeneratorStates.KEY][0])
    callback.on_validation_start(trainer, task)
    draws(task)  # a validation that samples (spiritlm's sample continuations)
    callback.on_validation_end(trainer, task)
    assert draws(task) == expected


def launch(*args: str, cwd: Path) -> subprocess.Popen:
    """A console script of this venv started as `conftest.run_cli` starts it, not waited for."""
    exe = Path(sys.executable).parent / args[0]
    env = {**os.environ, "SLMLAB_ROOT": str(REPO_ROOT)}
    return subprocess.Popen(
        [str(exe), *args[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path} appeared:\n{proc.stdout.read()[-5000:]}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.5)


# Each arm draws at random in its training steps: text_lm from torch's global generator (dropout, set
# here), csm from its own (the frames its decoder trains on). text_lm is killed at the start of an
# epoch (10 batches each), after the step-20 validation; csm in the middle of one. Per arm: its
# overrides, the checkpoint interval, the checkpoint the kill follows, the step it is killed at.
KILLS = {
    "text_lm": (["experiment=tiny_text_lm", "+model.task.net.dropout=0.1"], 10, 20, 22),
    "csm": (["experiment=tiny_csm"], 5, 15, 17),
}
STEPS = 30


@pytest.mark.parametrize("arm", KILLS)
def test_a_run_killed_after_a_checkpoint_resumes_exactly(
    arm, tiny_corpus, data_dir, make_cfg, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(HELPERS)  # record_steps, for the run in this process
    monkeypatch.setenv("PYTHONPATH", str(HELPERS))  # and in subprocesses
    arm_overrides, every, checkpoint, kill_at = KILLS[arm]
    overrides = [
        *arm_overrides,
        *RUN,
        f"trainer.max_steps={STEPS}",
        f"callbacks.periodic_checkpoint.every_n_train_steps={every}",
    ]
    train(make_cfg(*overrides, *record_steps(tmp_path / "whole")))  # never interrupted
    (whole,) = [read_steps(p) for p in (tmp_path / "whole").glob("steps-*.jsonl")]
    epochs = [[s["ids"] for s in whole[start : start + 10]] for start in (0, 10)]
    assert epochs[0] != epochs[1]  # Lightning's set_epoch reaches the sampler: reshuffled

    run = tmp_path / "killed"
    cli = [*overrides, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}"]
    parts = tmp_path / "parts"
    proc = launch(
        "slmlab-train", *cli, *record_steps(parts, kill_at), f"hydra.run.dir={run}", cwd=tmp_path
    )
    try:
        wait_for(parts / "stalled", proc)
        assert last_step(run) == checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    killed = read_steps(parts / f"steps-{proc.pid}-rank0.jsonl")
    assert [s["step"] for s in killed] == list(range(1, kill_at + 1))

    resumed_run = run_cli(
        "slmlab-train", *cli, *record_steps(parts), f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} at step {checkpoint}" in (
        resumed_run.stdout + resumed_run.stderr
    )
    (resumed,) = [
        read_steps(p)
        for p in parts.glob("steps-*.jsonl")
        if p.name != f"steps-{proc.pid}-rank0.jsonl"
    ]
    assert [s["step"] for s in resumed] == list(range(checkpoint + 1, STEPS + 1))
    # the same batches in the same order, and the same losses to the last bit
    assert killed[:checkpoint] + resumed == whole
    assert killed[checkpoint:] == resumed[: kill_at - checkpoint]  # the steps done twice, alike

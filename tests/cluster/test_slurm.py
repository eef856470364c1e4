"""slmlab on a real SLURM (`make test-cluster`; `scripts/local_slurm.sh` brings one up here): a `-m` sweep
submitted by `hydra/launcher=slurm_cpu`, one job of 2 tasks training with DDP over gloo, and a job
interrupted twice (the signal before a time limit, then `scontrol requeue`) that resumes each time in its own
run folder. Not part of `make test` (pyproject's `norecursedirs`); skipped when no controller answers, failed
instead under `SLMLAB_REQUIRE_SLURM=1` (set by `make test-cluster`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from slmlab.runs import REPO_ROOT

HERE = Path(__file__).parent  # slurm_probe.py, the callback every job here runs with
UP = ("idle", "mixed", "allocated", "completing")


def slurm_problem() -> str | None:
    """None when a SLURM controller answers and has a node up, else what is missing."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return "no SLURM client here (scontrol, sinfo not found)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines() or ["nothing"]
        return f"no SLURM controller answers (`scontrol ping`: {said[0]})"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True).stdout
    if not any(line.split()[1].rstrip("*~#") in UP for line in nodes.splitlines()):
        return f"no SLURM node is up (`sinfo`: {nodes.strip() or 'no node'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_controller() -> None:
    """Skip this module's tests (fail them under SLMLAB_REQUIRE_SLURM=1) when SLURM is not here."""
    problem = slurm_problem()
    if problem is None:
        return
    problem += "; bring one up on this machine with `sudo bash scripts/local_slurm.sh`"
    if os.environ.get("SLMLAB_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLMLAB_REQUIRE_SLURM=1: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory) -> Path:
    """The tiny corpus and its BPE, made once, before any job: the jobs of a sweep only read them."""
    logs = tmp_path_factory.mktemp("prepare")
    run_cli(
        "slmlab-prepare",
        "experiment=tiny_text_lm",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={logs}",
        "threads=1",
        cwd=logs,
    )
    return data_dir


@pytest.fixture
def job_env(monkeypatch) -> None:
    """What the jobs inherit through sbatch: the probe on PYTHONPATH, one thread per process."""
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def overrides(data_dir: Path, log_dir: Path) -> list[str]:
    return [
        "hydra/launcher=slurm_cpu",
        "experiment=tiny_text_lm",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        "threads=1",
        "test=false",
        "+callbacks.probe._target_=slurm_probe.SlurmProbe",
        "+callbacks.probe.output_dir=${paths.output_dir}/probe",
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def job_folders(sweep: Path) -> list[Path]:
    """submitit's folder of each job of the sweep (`.submitit/<array id>_<index>/`: the job's pickle,
    each task's log and result), by job id."""
    return sorted(p.parent for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


def job_logs(sweep: Path) -> str:
    """The end of every task's log of the sweep's jobs (for a failure message)."""
    return "\n".join(
        f"--- {log}\n{log.read_text()[-3000:]}"
        for folder in job_folders(sweep)
        for log in sorted(folder.glob("*_log.*"))
    )


def test_sweep_runs_each_point_as_a_slurm_job(prepared, tmp_path, job_env):
    sweep = tmp_path / "sweep"
    run_cli(
        "slmlab-train",
        "-m",
        *overrides(prepared, tmp_path),
        "trainer.max_steps=10",
        "model.task.optimizer.lr=1e-3,3e-3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    folders = job_folders(sweep)
    assert len(folders) == 2, job_logs(sweep)
    runs = {name: sweep / name for name in ("lr0.001", "lr0.003")}
    job_ids = set()
    for name, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["global_step"] == 10 and metrics["world_size"] == 1
        assert f"model.task.optimizer.lr={name[2:]}" in (run / ".hydra/overrides.yaml").read_text()
        (probe,) = [line for line in read_jsonl(run / "probe/rank0.jsonl") if "rank" in line]
        job_ids.add(probe["slurm_job_id"])
    # each run is its own SLURM job: two job ids, each with submitit's folder, log and result
    assert len(job_ids) == 2 and None not in job_ids
    for folder in folders:
        assert (folder / f"{folder.name}_0_result.pkl").is_file()
        assert "Job completed successfully" in (folder / f"{folder.name}_0_log.out").read_text()
    # each job's optimiser ran at its own learning rate: the cosine schedule ends 3x higher for 3e-3
    final_lr = {
        name: json.loads((run / "metrics.json").read_text())["metrics"]["lr-AdamW/pg1"]
        for name, run in runs.items()
    }
    assert final_lr["lr0.003"] == pytest.approx(3 * final_lr["lr0.001"])


def test_ddp_job_takes_its_two_ranks_from_slurm(prepared, tmp_path, job_env):
    sweep = tmp_path / "sweep"
    run_cli(
        "slmlab-train",
        "-m",
        *overrides(prepared, tmp_path),
        "strategy=ddp_cpu",  # 2 devices -> the launcher asks for 2 tasks on the node
        "trainer.max_steps=10",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    (folder,) = job_folders(sweep)
    (script,) = [p.read_text() for p in (sweep / ".submitit").glob("*/*_submission.sh")]
    assert "#SBATCH --ntasks-per-node=2" in script and "srun" in script
    run = sweep / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 10
    ranks = [read_jsonl(run / f"probe/rank{r}.jsonl") for r in (0, 1)]
    for r, lines in enumerate(ranks):
        started, *steps = lines
        # srun started task r, and Lightning took rank r, world size 2 from SLURM's environment
        # (no process of its own launched)
        assert started["cluster_environment"] == "SLURMEnvironment"
        assert (started["rank"], started["world_size"], started["slurm_procid"]) == (r, 2, str(r))
        assert [s["step"] for s in steps] == list(range(1, 11))
        assert "Job completed successfully" in (folder / f"{folder.name}_{r}_log.out").read_text()
    assert ranks[0][0]["slurm_job_id"] == ranks[1][0]["slurm_job_id"]
    assert ranks[0][0]["pid"] != ranks[1][0]["pid"]


def wait_for(condition, what: str, timeout: float, launcher: subprocess.Popen, log: Path):
    """Poll `condition()` until it returns something true; fail naming `what` when the launcher
    exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if launcher.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s; launcher log:\n{log.read_text()[-3000:]}")


def job_state(job_id: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()


def steps_of(probe: Path, restart: int) -> list[int]:
    """The optimisation steps the job's attempt `restart` (0: the first run) trained, in order."""
    return [s["step"] for s in read_jsonl(probe) if s.get("restart") == restart and "step" in s]


def test_a_requeued_job_resumes_in_its_run_folder_from_its_last_checkpoint(
    prepared, tmp_path, job_env
):
    """A job is interrupted twice: by the signal SLURM sends before a time limit (submitit's USR2,
    sent here with `scancel --signal`), which submitit answers by requeueing it, then by a plain
    `scontrol requeue` (an admin's, or a preemption's). Each time the job starts again in the same run
    folder and continues from its last periodic checkpoint (`resume: auto`); it ends at max_steps."""
    max_steps, every = 300, 20
    log = tmp_path / "launcher.log"
    command = [
        str(Path(sys.executable).parent / "slmlab-train"),
        "-m",
        *overrides(prepared, tmp_path),
        f"trainer.max_steps={max_steps}",
        f"callbacks.periodic_checkpoint.every_n_train_steps={every}",
    ]
    env = {**os.environ, "SLMLAB_ROOT": str(REPO_ROOT)}
    with log.open("w") as out:
        launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    job_id, sweep = None, tmp_path
    try:
        # the sweep folder is named by the launch time (${now:}), which the requeued job must keep
        sweep = wait_for(
            lambda: next((tmp_path / "tiny_text_lm/multiruns").glob("*/.submitit"), None),
            "the job submitted",
            120,
            launcher,
            log,
        ).parent
        probe = sweep / "0/probe/rank0.jsonl"
        job_id = wait_for(lambda: job_folders(sweep), "the job's folder", 60, launcher, log)[0].name
        interruptions = (["scancel", "--signal=USR2", job_id], ["scontrol", "requeue", job_id])
        for restart, interrupt in enumerate(interruptions):
            # once this attempt has saved a checkpoint of its own and trained 5 steps more
            wait_for(
                lambda restart=restart: len(steps_of(probe, restart)) >= every + 5,
                f"attempt {restart}: a checkpoint, then 5 steps more",
                300,
                launcher,
                log,
            )
            subprocess.run(interrupt, check=True)
            # SLURM holds a requeued job ~2 minutes (BeginTime): start it now
            wait_for(lambda: job_state(job_id) == "PENDING", "the job requeued", 120, launcher, log)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if job_id is not None and job_state(job_id):
            subprocess.run(["scancel", job_id])
    assert launcher.returncode == 0, f"launcher log:\n{log.read_text()[-3000:]}\n{job_logs(sweep)}"

    assert [p.name for p in job_folders(sweep)] == [job_id]  # one job, one run folder
    assert [p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()] == ["0"]
    starts = [line for line in read_jsonl(probe) if "rank" in line]
    assert [(s["restart"], s["slurm_job_id"]) for s in starts] == [
        (restart, starts[0]["slurm_job_id"]) for restart in range(3)
    ], "one job, run three times: once, then requeued twice"
    # each attempt started at a checkpoint the one before had saved, after its own start, and trained
    # on step by step; the last one to max_steps
    for before, after in zip(starts, starts[1:]):
        trained = steps_of(probe, before["restart"])
        assert trained == list(range(before["start_step"] + 1, trained[-1] + 1))
        assert after["start_step"] % every == 0
        assert before["start_step"] + every <= after["start_step"] <= trained[-1] < max_steps
    assert steps_of(probe, 2) == list(range(starts[2]["start_step"] + 1, max_steps + 1))
    run = sweep / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["start_step"], metrics["global_step"]) == (starts[2]["start_step"], max_steps)
    # submitit handled the signal; Lightning's own auto-requeue (hpc_ckpt_*.ckpt) did not act
    job_log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in job_log and "Job completed successfully" in job_log
    assert not list(run.glob("hpc_ckpt_*.ckpt"))

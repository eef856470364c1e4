"""Training text_lm end to end: the loss falls, runs resume, DDP on CPU, Hydra sweeps."""

import json
from pathlib import Path

from conftest import run_cli
from hydra.utils import instantiate

from slmlab.runs import build

HELPERS = Path(__file__).parent / "helpers"


def test_text_lm_validation_loss_falls(tiny_corpus, make_cfg):
    cfg = make_cfg("experiment=tiny_text_lm", "trainer.max_steps=60")
    datamodule, task = build(cfg)
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    before = trainer.validate(task, datamodule=datamodule, verbose=False)[0]["val/loss"]
    trainer.fit(task, datamodule=datamodule)
    after = float(trainer.callback_metrics["val/loss"])
    assert trainer.global_step == 60
    assert after < 0.75 * before, (before, after)


def overrides(data_dir, log_dir):
    return ["experiment=tiny_text_lm", f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}"]


def test_cli_run_writes_metrics_and_resumes_from_a_checkpoint(tiny_corpus, data_dir, tmp_path):
    run_cli(
        "slmlab-train",
        *overrides(data_dir, tmp_path),
        "trainer.max_steps=40",
        "hydra.run.dir=" + str(tmp_path / "first"),
        cwd=tmp_path,
    )
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert first["global_step"] == 40 and first["start_step"] == 0
    assert {"val/loss", "val/ppl", "test/loss", "train/loss"} <= set(first["metrics"])
    assert first["data"]["train"]["kept"] == 160 and first["data"]["train"]["skipped"] == 0
    assert list((tmp_path / "first" / "tensorboard").glob("events.out.tfevents.*"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert last.is_file()

    run_cli(
        "slmlab-train",
        *overrides(data_dir, tmp_path),
        "trainer.max_steps=60",
        f"ckpt_path={last}",
        "hydra.run.dir=" + str(tmp_path / "resumed"),
        cwd=tmp_path,
    )
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert resumed["start_step"] == 40 and resumed["global_step"] == 60


def record_training(monkeypatch, folder: str | Path) -> list[str]:
    """The overrides that add tests/helpers/record_training.py's callback, writing into `folder`."""
    monkeypatch.setenv("PYTHONPATH", str(HELPERS))
    return [
        "+callbacks.record._target_=record_training.RecordTraining",
        f"+callbacks.record.output_dir={folder}",
    ]


def test_ddp_cpu_splits_the_data_across_two_processes_and_keeps_them_in_sync(
    tiny_corpus, data_dir, tmp_path, monkeypatch
):
    run_cli(
        "slmlab-train",
        *overrides(data_dir, tmp_path),
        *record_training(monkeypatch, tmp_path / "record"),
        "strategy=ddp_cpu",
        "test=false",
        "hydra.run.dir=" + str(tmp_path / "ddp"),
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 60
    ranks = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    train_ids = {json.loads(line)["id"] for line in tiny_corpus.manifest("train").open()}
    assert len(train_ids) == 160  # 10 batches of 16 per epoch: 5 per rank, no padding batch
    for epoch in ranks[0]["batches"]:
        seen = [{i for batch in rank["batches"][epoch] for i in batch} for rank in ranks]
        assert not seen[0] & seen[1], f"epoch {epoch}: both ranks trained on {seen[0] & seen[1]}"
        assert seen[0] | seen[1] == train_ids, f"epoch {epoch}: not every utterance was seen"
    assert [sum(map(len, r["batches"].values())) for r in ranks] == [60, 60]  # 60 steps each
    # different data on each rank, yet the same weights at the end: the gradients were all-reduced
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]


def test_multirun_sweep_over_learning_rate(tiny_corpus, data_dir, tmp_path, monkeypatch):
    run_cli(
        "slmlab-train",
        "-m",
        *overrides(data_dir, tmp_path),
        *record_training(monkeypatch, "${paths.output_dir}/record"),
        "trainer.max_steps=10",
        "test=false",
        "model.task.optimizer.lr=1e-3,3e-3",
        "hydra.sweep.dir=" + str(tmp_path / "sweep"),
        cwd=tmp_path,
    )
    # each job folder is named by what varies across the sweep (Hydra's default is 0/, 1/)
    jobs = sorted(p for p in Path(tmp_path / "sweep").iterdir() if (p / ".hydra").is_dir())
    assert [j.name for j in jobs] == ["lr0.001", "lr0.003"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["global_step"] == 10
        assert (
            f"model.task.optimizer.lr={job.name[2:]}" in (job / ".hydra/overrides.yaml").read_text()
        )
        # the job's optimiser ran at its own learning rate, not only its folder and config say so
        recorded = json.loads((job / "record" / "rank0.json").read_text())
        assert recorded["first_lr"] == float(job.name[2:])

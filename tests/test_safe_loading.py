"""Safe loading: checkpoints, the token cache and fitted artifacts load with weights_only=True; a damaged
checkpoint is an error naming the file, a damaged cache shard is rebuilt with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from slmlab.artifacts import UnreadableFileError, check_checkpoint, load_tensors
from slmlab.data.datamodule import SpeechDataModule
from slmlab.data.fields import TextIdsField
from slmlab.runs import build, compose, load_task
from slmlab.tokenizers.text import load_or_fit_bpe


class TouchOnLoad:
    """Pickles as a call to `Path.touch(marker)`: unpickling it with weights_only=False runs that code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def truncate(path: Path) -> None:
    """Keep the first half of `path`'s bytes, as a copy cut off by a full disk or a killed job."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def trainer_for(cfg, max_steps: int):
    """The run's trainer with its callbacks and loggers, as `runs.train` builds it."""
    return instantiate(
        cfg.trainer,
        max_steps=max_steps,
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        logger=[instantiate(c) for c in cfg.logger.values()],
        enable_progress_bar=False,
    )


@pytest.fixture(scope="module")
def run_folder(tiny_corpus, data_dir, tmp_path_factory) -> Path:
    """A tiny text_lm run trained 4 steps with the run's callbacks: `<run>/.hydra/config.yaml` and
    `<run>/checkpoints/last.ckpt`, as the CLI leaves them."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose(
        "train",
        [f"paths.data_dir={data_dir}", "experiment=tiny_text_lm", "trainer.val_check_interval=2"],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    datamodule, task = build(cfg)
    trainer_for(cfg, max_steps=4).fit(task, datamodule=datamodule)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


def test_our_checkpoints_load_and_resume_with_weights_only(run_folder):
    last = run_folder / "checkpoints" / "last.ckpt"
    checkpoint = load_tensors(last)  # callback states included: only safe types were stored
    assert checkpoint["global_step"] == 4 and checkpoint["callbacks"]
    task = load_task(last)
    for name, value in task.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][name]), name

    cfg = OmegaConf.load(run_folder / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_folder / "resumed")
    datamodule, task = build(cfg)
    trainer = trainer_for(cfg, max_steps=6)
    trainer.fit(task, datamodule=datamodule, ckpt_path=last, weights_only=True)
    assert trainer.global_step == 6


def test_a_truncated_checkpoint_is_refused_naming_the_file(run_folder):
    cut = run_folder / "checkpoints" / "cut.ckpt"
    cut.write_bytes((run_folder / "checkpoints" / "last.ckpt").read_bytes())
    truncate(cut)
    for load in (load_task, check_checkpoint):
        with pytest.raises(UnreadableFileError) as error:
            load(cut)
        message = str(error.value)
        assert message.startswith(f"{cut} is truncated or corrupt (")
        assert "delete it and use another checkpoint of the run" in message


def test_a_checkpoint_that_pickles_code_is_refused_and_the_code_never_runs(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "evil.ckpt"
    ckpt.parent.mkdir(parents=True)
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {}, "payload": TouchOnLoad(marker)}, ckpt)
    with pytest.raises(UnreadableFileError, match="refuses to unpickle") as error:
        load_task(ckpt)
    assert str(error.value).startswith(f"{ckpt} holds objects that torch.load(weights_only=True)")
    assert "(Unsupported global: GLOBAL getattr was not an allowed global" in str(error.value)
    assert not marker.exists()


def test_a_corrupt_token_cache_shard_is_rebuilt_with_a_warning(tiny_corpus, tmp_path, caplog):
    fields = {"text_ids": TextIdsField({"text": load_or_fit_bpe(tiny_corpus)})}

    def train_tokens() -> list[torch.Tensor]:
        datamodule = SpeechDataModule(tiny_corpus, fields, cache_dir=str(tmp_path))
        datamodule.setup()
        return datamodule.datasets["train"].cached["text_ids"]

    built = train_tokens()
    (shard,) = (tmp_path / "artifacts" / "token_cache").glob("train-text_ids-*/tokens-*.pt")
    ids, marker = load_tensors(shard)["ids"], tmp_path / "code_ran"
    damages = {
        "truncated": lambda: truncate(shard),
        "unsafe": lambda: torch.save({"ids": ids, "values": TouchOnLoad(marker)}, shard),
        "other records": lambda: torch.save({"ids": ids[::-1], "values": built[::-1]}, shard),
        "not a dict": lambda: torch.save(built, shard),
    }
    for damage, apply in damages.items():
        apply()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="slmlab.artifacts"):
            rebuilt = train_tokens()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith(f"{shard} "), (damage, warnings)
        assert warnings[0].endswith(f": rebuilding {shard.parent}"), damage
        assert len(rebuilt) == len(built), damage
        assert all(torch.equal(a, b) for a, b in zip(rebuilt, built)), damage
        assert load_tensors(shard)["values"][0].tolist() == built[0].tolist(), damage
    assert not marker.exists()

"""Shared fixtures: one tiny embedded corpus per test session, and config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from slmlab.data.synthetic import SyntheticCorpus
from slmlab.runs import CONF_DIR, REPO_ROOT


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_corpus(data_dir) -> SyntheticCorpus:
    corpus = SyntheticCorpus(str(data_dir / "synthetic" / "tiny_seed0"), preset="tiny", seed=0)
    corpus.prepare()
    return corpus


@pytest.fixture
def make_cfg(data_dir, tmp_path):
    """compose('train', overrides) with data under the session's data dir and outputs in tmp_path."""

    def _make(*overrides: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return _make


def fit_on_tiny_corpus(cfg, built: tuple | None = None) -> tuple:
    """Build the run `cfg` describes (or take `built`, its (datamodule, task), for a test that looks at
    it first), validate it on one batch, train it, validate again:
    -> (task, metrics before training, metrics after) for the tests that check a loss falls."""
    from hydra.utils import instantiate

    from slmlab.runs import build

    datamodule, task = built or build(cfg)
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=1,
    )
    before = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    trainer.fit(task, datamodule=datamodule)
    return task, before, {k: float(v) for k, v in trainer.callback_metrics.items()}


# slmlab-eval at a test's size; tests that evaluate on the tiny corpus share these, so that one judge
# and one style classifier are fitted for all of them (the artifacts are keyed by these settings)
TINY_EVAL = [
    "eval.utterances=3",
    "eval.style_prompts=2",
    "eval.probe_pairs=3",
    "eval.max_seconds=1.0",
    "eval.continuation_seconds=0.5",
    "eval.judge.epochs=2",
    "eval.judge.model={dim: 32, layers: 1, heads: 2, ffn_dim: 64, kernel_size: 7}",
]
TORCHAO_NOTICE = (
    "Skipping import of cpp extensions"  # silenced by slmlab/__init__.py, for every CLI
)


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script of this venv the way a user does; fail with its output on error, or when
    it prints torchao's import notice."""
    exe = Path(sys.executable).parent / args[0]
    env = {**os.environ, "SLMLAB_ROOT": str(REPO_ROOT)}
    proc = subprocess.run(
        [str(exe), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert TORCHAO_NOTICE not in proc.stdout + proc.stderr, f"{args[0]} printed torchao's notice"
    return proc

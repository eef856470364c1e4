"""Configs are checked at compose time: a wrong type, an out-of-range value or an unknown key fails
before any work, naming the key, the value and what is allowed; the shipped configs all pass."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_configs import GROUPS, options

from slmlab.config_checks import ConfigError
from slmlab.runs import REPO_ROOT, compose

SPEECHLM_PARTS = ["model/speechlm/encoder", "model/speechlm/decoder"]

# (config, overrides, the key and value the message names, what it says is allowed)
BAD = [
    ("train", ["datamodule.batch_size=-4"], "datamodule.batch_size=-4", ">= 1"),
    ("train", ["datamodule.batch_size=0"], "datamodule.batch_size=0", ">= 1"),
    ("train", ["datamodule.max_tokens=0"], "datamodule.max_tokens=0", ">= 1, or null"),
    ("train", ["datamodule.on_wrong_rate=drop"], "on_wrong_rate='drop'", "resample | reject"),
    ("train", ["trainer.max_steps=abc"], "trainer.max_steps='abc'", "not an integer"),
    ("train", ["trainer.max_steps=0"], "trainer.max_steps=0", "0 trains nothing"),
    ("train", ["trainer.max_epochs=0"], "trainer.max_epochs=0", "-1 (no limit)"),
    ("train", ["+trainer.limit_train_batches=0"], "limit_train_batches=0", "0 trains nothing"),
    ("train", ["+trainer.limit_train_batches=1.5"], "limit_train_batches=1.5", "in (0, 1]"),
    ("train", ["trainer.val_check_interval=0"], "val_check_interval=0", "an integer >= 1"),
    ("train", ["model.task.optimizer.lr=0"], "model.task.optimizer.lr=0", "a number > 0"),
    ("train", ["model.task.optimizer.lr=-1e-3"], "optimizer.lr=-0.001", "a number > 0"),
    ("train", ["model.task.optimizer.lr=fast"], "optimizer.lr='fast'", "not a number"),
    ("train", ["model.task.optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]", "[0, 1)"),
    ("train", ["model.task.scheduler.num_warmup_steps=-1"], "num_warmup_steps=-1", ">= 0"),
    ("train", ["seed=-1"], "seed=-1", "[0, 2**32)"),
    ("train", ["threads=0"], "threads=0", ">= 1, or null"),
    ("train", ["test=maybe"], "test='maybe'", "true or false"),
    ("train", ["model=csm", "model.task.decoder_fraction=0"], "decoder_fraction=0", "(0, 1]"),
    ("train", ["model=csm", "model.task.decoder_fraction=1.5"], "decoder_fraction=1.5", "(0, 1]"),
    (
        "train",
        ["model=csm", "model.task.net.backbone.num_layers=0"],
        "backbone.num_layers=0",
        ">= 1",
    ),
    ("train", ["model=speechlm", "model.task.net.stack_factor=0"], "net.stack_factor=0", ">= 1"),
    (
        "train",
        ["model=speechlm", "model.task.net.projector=conv"],
        "projector='conv'",
        "swiglu | mlp",
    ),
    (
        "train",
        ["model=text_lm", "model.task.net.num_heads=2.5"],
        "net.num_heads=2.5",
        "not an integer",
    ),
    ("train", ["eval.utterances=0"], "eval.utterances=0", ">= 1"),
    ("train", ["eval.judge.lr=0"], "eval.judge.lr=0", "> 0"),
    ("prepare", ["datamodule.batch_size=-4"], "datamodule.batch_size=-4", ">= 1"),
    ("evaluate", ["eval.max_seconds=0"], "eval.max_seconds=0", "> 0"),
    ("generate", ["modality=VIDEO"], "modality='VIDEO'", "TEXT | SPEECH | ARBITRARY"),
    ("generate", ["generation.top_p=2"], "generation.top_p=2", "in (0, 1], or null"),
    ("generate", ["generation.num_beams=0"], "generation.num_beams=0", ">= 1, or null"),
    ("compare", ["study.commands=run"], "study.commands='run'", "a list of commands"),
]
# unknown keys: a plain node lists its keys; a `_target_` node takes its target's arguments
UNKNOWN = [
    ("train", ["+sead=1"], "sead=1: unknown key (did you mean seed?)"),
    ("train", ["+trainer.max_step=5"], "trainer.max_step=5: unknown key (did you mean max_steps?)"),
    ("train", ["+datamodule.batchsize=8"], "datamodule.batchsize=8: unknown key"),
    ("train", ["+model.task.decoder_fraction=0.5"], "model.task.decoder_fraction=0.5: unknown key"),
    ("train", ["+model.arm=x"], "model.arm='x': unknown key"),
    ("train", ["+eval.probes=3"], "eval.probes=3: unknown key"),
    ("train", ["+tokenizer.text.vocab=9"], "tokenizer.text.vocab=9: unknown key"),
    ("evaluate", ["+eval.judge.epoch=2"], "eval.judge.epoch=2: unknown key (did you mean epochs?)"),
    ("generate", ["+paths.out=x"], "paths.out='x': unknown key"),
]


def problems(config: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        compose(config, overrides)
    return str(error.value)


@pytest.mark.parametrize("config,overrides,named,allowed", BAD, ids=[" ".join(b[1]) for b in BAD])
def test_a_bad_value_names_its_key_its_value_and_what_is_allowed(config, overrides, named, allowed):
    message = problems(config, overrides)
    line = next(line for line in message.splitlines() if named in line)
    assert allowed in line.split(named, 1)[1], message


@pytest.mark.parametrize("config,overrides,named", UNKNOWN, ids=[" ".join(u[1]) for u in UNKNOWN])
def test_an_unknown_key_is_named_with_the_keys_allowed(config, overrides, named):
    message = problems(config, overrides)
    assert named in message and "allowed:" in message.split(named, 1)[1], message


def test_every_problem_comes_in_one_error():
    message = problems(
        "train", ["datamodule.batch_size=-4", "trainer.max_steps=abc", "+trainer.max_step=5"]
    )
    assert message.startswith("invalid config (3 problems)")
    for key in ("datamodule.batch_size", "trainer.max_steps", "trainer.max_step="):
        assert key in message


def test_a_target_that_does_not_import_is_named():
    message = problems("train", ["datamodule._target_=slmlab.data.datamodule.NoSuchModule"])
    assert (
        "datamodule._target_='slmlab.data.datamodule.NoSuchModule': cannot be imported" in message
    )


@pytest.mark.slow
def test_train_with_a_negative_batch_size_stops_before_any_work(tmp_path):
    """The CLI checks first: non-zero exit, the key on stderr, no corpus made, no checkpoint."""
    exe = Path(sys.executable).parent / "slmlab-train"
    proc = subprocess.run(
        [
            str(exe),
            "datamodule.batch_size=-4",
            "data.preset=tiny",  # should the check miss it: seconds of work, not minutes
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env={**os.environ, "SLMLAB_ROOT": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "datamodule.batch_size=-4: out of range; allowed: an integer >= 1" in proc.stderr
    assert not (tmp_path / "data").exists()  # no corpus synthesised, no tokenizer fitted
    assert not (tmp_path / "run" / "checkpoints").exists()


def nested(group: str) -> list[str]:
    """The model a nested model group needs (model/csm/size=tiny needs model=csm)."""
    parent = {"csm": "csm", "speechlm": "speechlm", "spiritlm": "spiritlm_base"}
    return [f"model={parent[group.split('/')[1]]}"] if group.count("/") == 2 else []


SHIPPED = [
    (g, o)
    for g in [*GROUPS, "model/csm/size", "model/spiritlm/size", *SPEECHLM_PARTS]
    for o in options(g)
]


@pytest.mark.parametrize("group,option", SHIPPED, ids=[f"{g}={o}" for g, o in SHIPPED])
def test_every_shipped_option_passes_the_check(group, option):
    compose("train", [*nested(group), f"{group}={option}"])


@pytest.mark.parametrize("config", ["prepare", "evaluate", "generate", "compare"])
def test_every_shipped_entry_point_config_passes_the_check(config):
    compose(config)

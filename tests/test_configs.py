"""Every option of every config group composes, and the scale switches say what they should."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from slmlab.runs import CONF_DIR

GROUPS = [
    "paths",
    "data",
    "tokenizer/text",
    "tokenizer/speech",
    "model",
    "trainer",
    "precision",
    "strategy",
    "callbacks",
    "logger",
    "experiment",
    "scale",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in options(g)] + [
    ("hydra/launcher", "basic"),
    ("hydra/launcher", "slurm"),
    ("hydra/launcher", "slurm_cpu"),
]


def test_groups_exist_with_the_documented_options():
    assert set(options("precision")) == {"fp32", "bf16-mixed", "16-mixed", "bf16-true"}
    assert set(options("strategy")) == {"auto", "ddp", "ddp_cpu", "fsdp"}
    assert set(options("data")) == {"synthetic", "librispeech", "manifest"}
    assert {"bpe", "hf_pretrained"} <= set(options("tokenizer/text"))
    assert {"text_lm", "speechlm", "spiritlm_base", "spiritlm_expressive"} <= set(options("model"))
    assert {"units_mfcc", "units_hubert"} <= set(options("tokenizer/speech"))
    assert set(options("model/spiritlm/size")) == {"tiny", "demo", "gpu_100m", "7b"}
    assert {"codec_builtin", "codec_mimi"} <= set(options("tokenizer/speech"))
    assert set(options("model/csm/size")) == {"tiny", "demo", "gpu_100m", "1b"}
    assert set(options("scale")) == set(options("model/text_lm/size")) == {"demo", "gpu_100m"}
    assert set(options("model/speechlm/size")) == {"demo", "gpu_100m"}
    assert set(options("model/speechlm/encoder")) == {
        "fastconformer_corpus",
        "whisper_tiny",
        "wav2vec2_tiny",
        "hubert_tiny",
        "pretrained",
    }
    assert set(options("model/speechlm/decoder")) == {
        "qwen2_tiny",
        "llama_tiny",
        "gpt2_tiny",
        "pretrained",
    }


@pytest.mark.parametrize("group,option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_every_option_composes(group, option, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"{group}={option}", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    # every value that needs no user input resolves (??? marks a required user value, e.g. data.source)
    for key in ("trainer", "model", "datamodule", "callbacks", "logger"):
        OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=False)
    if group == "precision":
        assert cfg.trainer.precision == {"fp32": "32-true"}.get(option, option)


SPEECHLM = [
    (g, o) for g in ("model/speechlm/encoder", "model/speechlm/decoder") for o in options(g)
]


@pytest.mark.parametrize("group,option", SPEECHLM, ids=[f"{g}={o}" for g, o in SPEECHLM])
def test_every_speechlm_preset_composes(group, option):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model=speechlm", f"{group}={option}"])
    part = cfg.model.task.net[group.rsplit("/", 1)[1]]
    assert ("model_type" in part) != (
        option == "pretrained"
    )  # a preset has sizes, `pretrained` a path
    assert OmegaConf.is_missing(part, "pretrained_path") == (option == "pretrained")


@pytest.mark.parametrize("size", options("model/spiritlm/size"))
@pytest.mark.parametrize("model", ["spiritlm_base", "spiritlm_expressive"])
def test_every_spiritlm_size_composes_with_its_speech_tokenizer(model, size):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"model={model}", f"model/spiritlm/size={size}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.runtime.choices["tokenizer/speech"] == "units_mfcc"
    assert list(cfg.model.task.speech_streams) == (
        ["units"] if model == "spiritlm_base" else ["units", "pitch", "style"]
    )
    assert (cfg.model.task.net.init_device == "meta") == (size == "7b")


@pytest.mark.parametrize("size", options("model/csm/size"))
def test_every_csm_size_composes_with_a_codec(size):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=csm", f"model/csm/size={size}"], return_hydra_config=True
        )
    assert cfg.hydra.runtime.choices["tokenizer/speech"] == "codec_builtin"
    assert (
        set(cfg.model.task.net.backbone)
        == set(cfg.model.task.net.decoder)
        >= {"num_layers", "embed_dim"}
    )
    assert (cfg.model.task.net.init_device == "meta") == (size == "1b")


def test_slurm_launcher_follows_the_trainer():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.account=speech",
                "hydra.launcher.timeout_min=600",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu", "speech", 600)


def sbatch_script(tmp_path, monkeypatch, *overrides: str) -> tuple[str, object]:
    """The sbatch script hydra/launcher=slurm* would submit for slmlab's composed config, made without
    a controller: the launcher's own `launch` maps its settings onto submitit's executor, which is
    captured at its submission (`map_array`); submitit then writes the script. -> (script, executor)."""
    import submitit

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[*overrides, f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True
        )
    captured = []
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun here
    monkeypatch.setattr(
        submitit.AutoExecutor, "map_array", lambda executor, *args: captured.append(executor) or []
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["seed=0"]], initial_job_idx=0)
    executor = captured[0]._executor
    return executor._make_submission_file_text("python -m submitit.core._submit", "uid"), executor


def test_slurm_submission_script_carries_the_layout(tmp_path, monkeypatch):
    script, executor = sbatch_script(
        tmp_path,
        monkeypatch,
        "hydra/launcher=slurm",
        "strategy=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=speech",
        "hydra.launcher.timeout_min=600",
    )
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=speech",
        "#SBATCH --time=600",
        "#SBATCH --signal=USR2@120",  # submitit requeues on it; the run resumes (resume: auto)
    ):
        assert line in script.splitlines()
    assert executor.max_num_timeout == 3  # requeued after up to 3 time limits


def test_slurm_cpu_submission_script_asks_for_no_gpu(tmp_path, monkeypatch):
    script, _ = sbatch_script(tmp_path, monkeypatch, "hydra/launcher=slurm_cpu", "strategy=ddp_cpu")
    lines = script.splitlines()
    assert {"#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=4GB"} <= set(
        lines
    )
    assert not [line for line in lines if "gpu" in line]


@pytest.mark.parametrize("strategy", ["auto", "ddp_cpu"])
def test_cpu_strategies_instantiate_a_trainer(strategy, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"strategy={strategy}", f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.world_size == (2 if strategy == "ddp_cpu" else 1)


def test_sweep_job_folders_are_named_by_what_varies_and_safe(tmp_path):
    """hydra.sweep.subdir: the overrides that vary across the sweep (from the sweeper's
    multirun.yaml), a group's choice alone; the job number only where nothing varies or a value had
    to be made safe."""
    from slmlab.runs import sweep_job_name

    def name(job_overrides, num, sweep_overrides, params=None):
        sweep = {"sweeper": {"params": params}, "overrides": {"task": sweep_overrides}}
        OmegaConf.save({"hydra": sweep}, tmp_path / "multirun.yaml")
        job = {
            "sweep": {"dir": str(tmp_path)},
            "job": {"num": num},
            "overrides": {"task": job_overrides},
            "runtime": {"choices": {"model": "csm", "experiment": "x"}},
        }
        return sweep_job_name(_root_=OmegaConf.create({"hydra": job}))

    swept = {"model": "csm,speechlm"}
    assert name(
        ["model=csm", "experiment=x", "seed=1"], 3, ["experiment=x", "seed=0,1"], swept
    ) == ("csm_seed1")
    assert (
        name(["paths.data_dir='/d/b=c'"], 1, ["paths.data_dir=/d/a,'/d/b=c'"]) == "data_dir-d-b-c_1"
    )
    assert name(["seed=0", "trainer.max_steps=4"], 0, ["seed=0", "trainer.max_steps=4"]) == "0"
    (tmp_path / "multirun.yaml").unlink()
    assert (
        sweep_job_name(
            _root_=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"num": 2}}})
        )
        == "2"
    )


def parameter_count(cfg, arm: str) -> int:
    """The arm's network as the config builds it, on the meta device (no memory), with the vocabularies of
    a BPE of 1024, 500 units (+ 64 pitch and 100 style values for Expressive) and 8 x 256 codec codes."""
    build = instantiate(cfg.model.task.net)
    with torch.device("meta"):
        if arm == "csm":
            net = build(text_vocab_size=1024, cardinality=256, num_codebooks=8)
        elif arm == "speechlm":
            net = build(vocab_size=1025, audio_token_id=1024)
        else:
            extra = {"text_lm": 0, "spiritlm_base": 2 + 500, "spiritlm_expressive": 2 + 664}[arm]
            net = build(vocab_size=1024 + extra)
    return sum(p.numel() for p in net.parameters())


def test_compare_gpu_parameter_counts():
    """experiment=compare_gpu (the documented GPU study) puts every arm at about 100 M parameters, within
    10 % of the text_lm baseline's, both regimes and three seeds on LibriSpeech; the demo stays at ~4 M."""
    counts, demo = {}, {}
    for arm in ("text_lm", "spiritlm_base", "spiritlm_expressive", "csm", "speechlm"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[f"model={arm}", "experiment=compare_gpu", "data.source=/data/LS"],
                return_hydra_config=True,
            )
            counts[arm] = parameter_count(cfg, arm)
            demo[arm] = parameter_count(compose("train", overrides=[f"model={arm}"]), arm)
    assert cfg.hydra.runtime.choices["data"] == "librispeech"
    assert str(cfg.hydra.sweeper.params.regime) == "from_scratch,recipe"
    assert all(85e6 <= n <= 115e6 for n in counts.values()), counts
    assert all(abs(n / counts["text_lm"] - 1) <= 0.10 for n in counts.values()), counts
    assert all(3e6 <= n <= 5.5e6 for n in demo.values()), demo

"""A run, from its config to its metrics: the library behind every entry point (`slmlab.cli`), the
benchmarks and the tests.

    compose("train", ["model=csm"])        -> the config the CLI would compose (outside a Hydra app)
    build(cfg, run_dir)                    -> (datamodule, task): corpus -> tokenizers -> both
    train(cfg)                             -> fit, test the best checkpoint, evaluate (`evaluate=true`)
    load_task(ckpt_path)                   -> a finished run's task, rebuilt from its run folder alone
    evaluate_run(task, corpus, ...)        -> every metric the arm declares, into metrics.json and TensorBoard

A run folder stands alone: `<run>/.hydra/config.yaml` (the resolved config), `<run>/checkpoints/*.ckpt`
(the weights and `hyper_parameters`), `<run>/tokenizers/` (the text tokenizer, speech tokenizer or
codec, and unit vocoder it was trained with, each saved by its own `save`, with `artifact.json`
recording their classes, fingerprints and the records of the corpus artifacts they came from),
`<run>/metrics.json` and `<run>/tensorboard/`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from slmlab.artifacts import (
    CHECKPOINT_ADVICE,
    RECORD,
    UnreadableFileError,
    fit_once,
    load_json,
    load_tensors,
)
from slmlab.config_checks import check_config
from slmlab.data.manifest import RecordPolicy
from slmlab.eval.evaluate import Evaluation, Evaluator
from slmlab.eval.tensorboard import log_evaluation
from slmlab.pretrain import load_or_fit_part

log = logging.getLogger(__name__)

TOKENIZERS = "tokenizers"  # <run>/tokenizers/<role>/: the run's own copy of its tokenizers
PRETRAINED_PARTS = (
    "pretrained_parts.json"  # regime=recipe: {key under model.task: the folder it started from}
)
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(REPO_ROOT / "conf")
# `paths.root_dir` in conf/paths/default.yaml: $SLMLAB_ROOT when set, else this checkout
OmegaConf.register_new_resolver(
    "slmlab_root", lambda: os.environ.get("SLMLAB_ROOT", str(REPO_ROOT)), replace=True
)


def sweep_job_name(*, _root_: DictConfig) -> str:
    """A sweep job's folder name from the overrides that vary across the sweep (`speechlm_seed0`,
    `lr0.003`): a config group's choice by itself, any other key as `<last part of key><value>`.
    Replaces Hydra's `${hydra.job.num}`, which names the jobs 0/, 1/, ...; the job number is kept
    where nothing varies, or where a value had to be made safe ([A-Za-z0-9._+-] only) or short."""
    hydra = _root_.hydra
    multirun = Path(hydra.sweep.dir) / "multirun.yaml"  # written by the sweeper before any job
    if not multirun.is_file():
        return str(hydra.job.num)
    sweep = OmegaConf.load(multirun).hydra
    parser = OverridesParser.create()
    params = [f"{key}={value}" for key, value in (sweep.sweeper.get("params") or {}).items()]
    swept = parser.parse_overrides([*params, *sweep.overrides.task])
    varying = {o.key_or_group for o in swept if o.is_sweep_override()}
    parts = []
    for override in parser.parse_overrides(list(hydra.overrides.task)):
        if override.key_or_group in varying:
            value = str(override.value())
            is_group = override.key_or_group in hydra.runtime.choices
            parts.append(value if is_group else override.key_or_group.split(".")[-1] + value)
    name = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", name)[:96]
    if not name:
        return str(hydra.job.num)
    return safe if safe == name else f"{safe}_{hydra.job.num}"


OmegaConf.register_new_resolver("slmlab_sweep_job", sweep_job_name, replace=True)

# the run's settings shown in TensorBoard's hparams table (compact, so that a sweep's runs line up)
HPARAMS = {
    "arm": "model.name",
    "seed": "seed",
    "max_steps": "trainer.max_steps",
    "batch_size": "datamodule.batch_size",
    "lr": "model.task.optimizer.lr",
    "corpus": "data.preset",
}


def compose(config_name: str = "train", overrides: list[str] = ()) -> DictConfig:
    """The config `slmlab-<config_name> overrides...` would run with, composed outside a Hydra app
    and checked as the CLI checks it (`ConfigError`: every bad key, its value, what is allowed)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides))
    check_config(cfg, config_name)
    return cfg


def check_speech_tokenizer(cfg: DictConfig, choice: str | None, model: str = "this model") -> None:
    """Fail before any fitting when `tokenizer/speech=choice` is not one the model accepts."""
    accepted = list(cfg.model.get("speech_tokenizers") or [])
    if accepted and choice not in accepted:
        raise ValueError(
            f"tokenizer/speech={choice} does not fit model={model}; it accepts tokenizer/speech="
            f"{' | '.join(accepted)}"
        )
    if not accepted and cfg.tokenizer.get("speech") is not None:
        log.warning("tokenizer/speech=%s is set but this model uses no speech tokenizer", choice)


def load_corpus(cfg: DictConfig):
    """The run's corpus, carrying the record policy of `cfg.datamodule`, so that every reader (fitters,
    judges, the evaluator, training) keeps and skips the same records."""
    corpus = instantiate(cfg.data.corpus)
    corpus.record_policy = RecordPolicy.model_validate(
        OmegaConf.to_container(cfg.datamodule, resolve=True)
    )
    return corpus


def fit_tokenizers(cfg: DictConfig, corpus) -> dict:
    """{"text": ..., "speech": ...} (speech for the arms that take one) as `cfg.tokenizer` says: loaded
    from the corpus's published artifacts, or fitted on it by the first caller (`artifacts.fit_once`)."""
    tokenizers = {"text": instantiate(cfg.tokenizer.text, corpus=corpus)}
    if cfg.model.get("speech_tokenizers"):
        tokenizers["speech"] = instantiate(cfg.tokenizer.speech, corpus=corpus)
    return tokenizers


def fit_pretrained_parts(cfg: DictConfig, corpus, tokenizers: dict) -> dict[str, str]:
    """regime=recipe: {key under `model.task`: local folder} for each pretrained part the arm's recipe
    (`model.recipe`: `{part: {into: key, model: {...}}}`) names, each fitted once per corpus with the
    settings `cfg.pretrain.<part>` (slmlab.pretrain.load_or_fit_part) and saved as a `save_pretrained`
    folder, which the arm then loads through the same key as a real Llama or HuBERT; regime=from_scratch:
    {}. Call it before an arm extends the text tokenizer: the text LM's vocabulary is the corpus's BPE."""
    if cfg.get("regime", "from_scratch") == "from_scratch":
        return {}
    recipe = cfg.model.get("recipe")
    if not recipe:
        raise ValueError(
            f"regime=recipe: model={cfg.model.name} names no pretrained parts (model.recipe); "
            "use regime=from_scratch"
        )
    folders = {}
    for part, spec in recipe.items():
        settings = OmegaConf.to_container(cfg.pretrain.get(part) or {}, resolve=True)
        if spec.get("model"):  # the arm's own architecture
            settings["model"] = OmegaConf.to_container(spec.model, resolve=True)
        folder = load_or_fit_part(part, corpus, tokenizers["text"], **settings)
        folders[spec.into] = str(folder)
        log.info("regime=recipe: model.task.%s = %s (%s)", spec.into, folders[spec.into], part)
    return folders


def build_task(cfg: DictConfig, tokenizers: dict, pretrained: dict[str, str] | None = None):
    """The arm's task on these tokenizers (an arm may extend the text tokenizer in place), with each
    `model.task.<key>` of `pretrained` (fit_pretrained_parts) set to its folder."""
    if pretrained:
        cfg = cfg.copy()
        with open_dict(cfg):
            for key, folder in pretrained.items():
                OmegaConf.update(cfg, f"model.task.{key}", folder, merge=False)
    extra = {"speech_tokenizer": tokenizers["speech"]} if "speech" in tokenizers else {}
    task = instantiate(cfg.model.task, tokenizer=tokenizers["text"], **extra)
    return task.train()  # from_pretrained leaves what it loads in eval mode, which Lightning keeps


def build(cfg: DictConfig, run_dir: str | Path | None = None):
    """corpus -> tokenizers -> datamodule and task, as the config says. With `run_dir` (training), the
    tokenizers are first saved into `<run_dir>/tokenizers/` (rank 0), before an arm extends them."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if "tokenizer/speech" in choices:  # composed here (train, prepare), not a saved run's config
        check_speech_tokenizer(cfg, choices["tokenizer/speech"], choices.get("model"))
    corpus = load_corpus(cfg)
    corpus.prepare()
    tokenizers = fit_tokenizers(cfg, corpus)
    if run_dir is not None and rank_zero_only.rank == 0:
        save_tokenizers(tokenizers, run_dir)
    fields = {
        name: instantiate(field, tokenizers=tokenizers) for name, field in cfg.model.fields.items()
    }
    datamodule = instantiate(cfg.datamodule, corpus=corpus, fields=fields)
    pretrained = fit_pretrained_parts(cfg, corpus, tokenizers)
    if pretrained and run_dir is not None and rank_zero_only.rank == 0:
        (Path(run_dir) / PRETRAINED_PARTS).write_text(json.dumps(pretrained, indent=2))
    if cfg.get("seed") is not None:  # initial weights from the seed alone: a part fitted here drew
        L.seed_everything(cfg.seed, workers=True)  # from the generators, one loaded did not
    task = build_task(cfg, tokenizers, pretrained)
    if cfg.get("compile"):  # torch.compile in place (nn.Module.compile): same state_dict keys
        task.net.compile()
    return datamodule, task


def _provenance(part) -> dict:
    """Where a tokenizer (or vocoder) was loaded from, and that artifact's record (its settings and
    input fingerprints; none for a pretrained one)."""
    source = getattr(part, "source", None)
    record = Path(source) / RECORD if source is not None else None
    return {
        "source": str(source) if source is not None else None,
        "artifact": load_json(record) if record is not None and record.is_file() else None,
    }


def save_tokenizers(tokenizers: dict, run_dir: str | Path) -> Path:
    """Save each tokenizer with its own `save` into `<run_dir>/tokenizers/<role>/` (a speech tokenizer
    with its unit vocoder), published atomically (`artifacts.fit_once`) with `artifact.json`: per role
    its class, fingerprint and provenance. A run resumed into its own folder keeps the folder there,
    which must hold the same tokenizers. -> the folder."""
    folder = Path(run_dir) / TOKENIZERS
    record = {}
    for role, tokenizer in tokenizers.items():
        kind = type(tokenizer)
        record[role] = {
            "class": f"{kind.__module__}.{kind.__qualname__}",
            "fingerprint": tokenizer.fingerprint(),
            **_provenance(tokenizer),
        }
        if getattr(tokenizer, "decoder", None) is not None:
            record[role]["decoder"] = _provenance(tokenizer.decoder)

    def save(tmp: Path) -> None:
        for role, tokenizer in tokenizers.items():
            tokenizer.save(tmp / role)

    saved = fit_once(folder, save, lambda published: load_json(published / RECORD), record)
    for role, entry in record.items():
        if saved.get(role, {}).get("fingerprint") != entry["fingerprint"]:
            raise ValueError(
                f"{folder} holds other tokenizers than this run's ({role}: fingerprint "
                f"{saved.get(role, {}).get('fingerprint')}, not {entry['fingerprint']}); write the run "
                "into a new folder"
            )
    return folder


def load_tokenizers(run_dir: str | Path) -> dict:
    """The tokenizers saved in `<run_dir>/tokenizers/`, each checked against the fingerprint recorded
    when the run was trained: the same token ids, without the corpus."""
    folder = Path(run_dir) / TOKENIZERS
    record = load_json(folder / RECORD)
    tokenizers = {}
    for role, entry in record.items():
        if not entry["class"].startswith("slmlab.tokenizers."):
            raise UnreadableFileError(
                folder / RECORD,
                f"names {entry['class']} for {role}, not a class of slmlab.tokenizers",
            )
        tokenizer = get_class(entry["class"]).load(folder / role)
        if tokenizer.fingerprint() != entry["fingerprint"]:
            raise UnreadableFileError(
                folder / role,
                f"does not hold the {role} tokenizer the run was trained with (fingerprint "
                f"{tokenizer.fingerprint()}, recorded {entry['fingerprint']} in {folder / RECORD})",
                "restore the run's copy of the folder",
            )
        tokenizers[role] = tokenizer
    return tokenizers


def check_checkpoint_tokenizers(ckpt_path: str | Path, run_dir: str | Path) -> None:
    """A checkpoint continued in `run_dir` must have been trained with the tokenizers this run saved in
    `<run_dir>/tokenizers/`: the fingerprints its own run folder recorded (`<ckpt run>/tokenizers/`) must
    equal these, role by role, or its weights would sit under other token ids. A checkpoint outside a run
    folder that records them (a file sent alone) is taken with a warning."""
    ckpt_run = Path(ckpt_path).resolve().parent.parent
    theirs, ours = ckpt_run / TOKENIZERS / RECORD, Path(run_dir) / TOKENIZERS / RECORD
    if not ours.is_file() or ckpt_run == Path(run_dir).resolve():
        return
    if not theirs.is_file():
        log.warning(
            "ckpt_path=%s: no %s beside it, so its tokenizers cannot be checked against this run's",
            ckpt_path,
            theirs,
        )
        return
    recorded, saved = load_json(theirs), load_json(ours)
    for role, entry in saved.items():
        fingerprint = recorded.get(role, {}).get("fingerprint")
        if fingerprint != entry["fingerprint"]:
            raise ValueError(
                f"ckpt_path={ckpt_path} was trained with another {role} tokenizer (fingerprint "
                f"{fingerprint} in {theirs}) than this run's ({entry['fingerprint']}, from "
                f"{entry.get('source')}): its weights belong to other token ids; train on that run's "
                "corpus and tokenizer settings, or start from scratch"
            )


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint the run `cfg` continues from: `ckpt_path` when given; else, with `resume=auto`
    (NeMo's resume_if_exists), the latest state in the run's own folder, `<paths.output_dir>/checkpoints/
    last.ckpt`, or Lightning's SLURM requeue checkpoint `<paths.output_dir>/hpc_ckpt_<n>.ckpt` where that
    one is further on; else None (a new run; always with `resume=never`). A truncated, corrupt or unsafe
    checkpoint fails here, naming the file (`artifacts.check_checkpoint`'s check: tensors mapped, not
    read), before anything is fitted."""
    if cfg.get("ckpt_path"):
        candidates = [Path(cfg.ckpt_path)]
    elif cfg.get("resume", "auto") == "auto":
        run_dir = Path(cfg.paths.output_dir)
        candidates = [
            run_dir / "checkpoints" / "last.ckpt",
            *sorted(run_dir.glob("hpc_ckpt_*.ckpt")),
        ]
        candidates = [path for path in candidates if path.is_file()]
    else:
        candidates = []
    steps = {
        path: load_tensors(path, CHECKPOINT_ADVICE, mmap=True).get("global_step", 0)
        for path in candidates
    }
    if not steps:
        return None
    latest = max(steps, key=steps.get)  # on a tie, last.ckpt (saved between two steps)
    log.info("resuming from %s at step %d", latest, steps[latest])
    return str(latest)


def train(cfg: DictConfig) -> dict:
    """Fit the run `cfg` describes, from scratch or from where it stopped (`resume_checkpoint`); then
    test its best checkpoint (`test`), save the transformers layout (arms that have one) and evaluate it
    (`evaluate`). -> the last logged metrics."""
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_checkpoint(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    datamodule, task = build(cfg, run_dir=cfg.paths.output_dir)
    if ckpt_path is not None and rank_zero_only.rank == 0:  # rank 0 saved this run's tokenizers
        check_checkpoint_tokenizers(ckpt_path, cfg.paths.output_dir)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:  # the whole config (CSV, TensorBoard text)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if cfg.get("test"):  # report the best checkpoint (by val/loss) on both held-out splits
        monitoring = [c for c in trainer.checkpoint_callbacks if c.monitor]
        best = (monitoring[0].best_model_path if monitoring else "") or None
        trainer.validate(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
        trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
    if hasattr(task, "save_pretrained") and trainer.is_global_zero:  # the transformers way
        task.save_pretrained(Path(cfg.paths.output_dir) / "pretrained")
    if cfg.get("evaluate") and trainer.is_global_zero:  # slmlab-eval on the tested checkpoint
        tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        evaluate_run(task, datamodule.corpus, cfg.eval, cfg, cfg.paths.output_dir, tensorboard)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def load_task(ckpt_path: str | Path, with_config: bool = False, generation: Mapping | None = None):
    """The run's task with the checkpoint's weights, rebuilt from `<run>/.hydra/config.yaml` and the
    tokenizers in `<run>/tokenizers/`: the corpus is not read, nothing is fitted or synthesised (and
    that config, `with_config`). `generation` (a dict, or a CLI's `generation` node) overrides keys of
    the run's `model.task.generation` (its decoding); a null keeps the run's value. A run made before
    runs kept their tokenizers loads them from its corpus, as then, with a warning."""
    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path.parent.parent
    run_config = run_dir / ".hydra" / "config.yaml"
    if not ckpt_path.is_file() or not run_config.is_file():
        raise FileNotFoundError(
            f"{ckpt_path}: expected a checkpoint inside a run folder with {run_config}"
        )
    checkpoint = load_tensors(ckpt_path, CHECKPOINT_ADVICE)  # before `build` fits anything
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableFileError(ckpt_path, "has no state_dict: not a Lightning checkpoint")
    cfg = OmegaConf.load(run_config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        if isinstance(generation, DictConfig):
            generation = OmegaConf.to_container(generation, resolve=True)
        overrides = {k: v for k, v in (generation or {}).items() if v is not None}
        if overrides:
            cfg.model.task.generation = OmegaConf.merge(
                cfg.model.task.get("generation") or {}, overrides
            )
    if (run_dir / TOKENIZERS / RECORD).is_file():
        tokenizers = load_tokenizers(run_dir)
    else:
        tokenizers = _tokenizers_of_an_older_run(cfg, run_dir)
    task = build_task(cfg, tokenizers)
    task.load_state_dict(checkpoint["state_dict"])
    return (task.eval(), cfg) if with_config else task.eval()


def _tokenizers_of_an_older_run(cfg: DictConfig, run_dir: Path) -> dict:
    """A run folder without `tokenizers/` (made before runs kept them): its tokenizers from its corpus,
    as they were loaded then, with a warning; an error naming both folders when the corpus is gone."""
    corpus = load_corpus(cfg)
    if not Path(corpus.manifest("train")).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {TOKENIZERS}/ folder (a run made before runs kept their tokenizers) "
            f"and its corpus {corpus.root} is gone, so its tokenizers cannot be found; restore that "
            "corpus with its artifacts/ folder to load the run"
        )
    log.warning(
        "%s has no %s/ folder (a run made before runs kept their tokenizers): loading them from its "
        "corpus %s as then, which fits them again if that corpus no longer holds them; their token "
        "ids may then differ from the ones the weights were trained on",
        run_dir,
        TOKENIZERS,
        corpus.root,
    )
    return fit_tokenizers(cfg, corpus)


def evaluate_run(
    task,
    corpus,
    eval_cfg: DictConfig,
    run_cfg: DictConfig,
    output_dir: str | Path,
    logger: TensorBoardLogger | None = None,
) -> Evaluation:
    """Evaluate `task` on `corpus` with the judges of `eval_cfg`; merge the result into
    `output_dir`/metrics.json and log it to its TensorBoard folder: key "eval" for the test split, or
    "eval_val" (no TensorBoard) for `eval.split=val`, the split decoding settings are chosen on."""
    settings = {
        k: v
        for k, v in OmegaConf.to_container(eval_cfg, resolve=True).items()
        if k not in ("judge", "style_classifier")
    }
    evaluator = Evaluator(
        corpus,
        instantiate(eval_cfg.judge, corpus=corpus),
        instantiate(eval_cfg.style_classifier, corpus=corpus),
        **settings,
    )
    L.seed_everything(run_cfg.seed)  # sampled TTS and continuations repeat on a rerun
    if torch.cuda.is_available():  # Lightning's teardown leaves the task on the CPU
        task.to("cuda")
    evaluation = evaluator(task.eval())
    path = Path(output_dir) / "metrics.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    key = "eval" if evaluator.split == "test" else f"eval_{evaluator.split}"
    record[key] = {
        "metrics": evaluation.metrics,
        "baselines": evaluation.baselines,
        "empty_outputs": evaluation.empty,
        "items": evaluation.items,  # each item's (num, den) per metric: the report's intervals
        "settings": settings,
        "generation": OmegaConf.to_container(
            OmegaConf.create(run_cfg.model.task.get("generation") or {}), resolve=True
        ),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s metrics -> %s", key, path)
    if key != "eval":  # the run's TensorBoard holds its test evaluation only
        return evaluation
    logger = logger or TensorBoardLogger(
        Path(output_dir) / "tensorboard", name=None, version="", default_hp_metric=False
    )
    hparams = {name: OmegaConf.select(run_cfg, key) for name, key in HPARAMS.items()}
    log_evaluation(
        logger,
        evaluation,
        hparams | {"parameters": record.get("parameters")},
        record.get("global_step", 0),
    )
    return evaluation

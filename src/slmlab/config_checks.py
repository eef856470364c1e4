"""Configs checked before any work: a composed config's values against dataclass schemas, and the
keys of every `_target_` node against its target's arguments; every problem in one error.

    check_config(cfg, "train")   -> None, or ConfigError: one line per problem, each naming the key,
                                    its value and what is allowed

The YAML files stay the source of truth: a schema types and bounds the plain values it names (and,
for a node without `_target_`, says which keys it has); a `_target_` node takes the arguments its
target accepts. Hydra's structured configs (schemas in the ConfigStore) would stop at the first bad
key and know no ranges; OmegaConf's typed nodes still do the type checks and conversions here.
"""

import difflib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    ValidationError,
)

# A schema may say where its node's other keys go: `other_keys = True` (any), or `takes = "a.b.C"` (the
# arguments of that callable). Not the schema's business: instantiate's keys, and the `hydra` node of a
# config composed with return_hydra_config.
HYDRAS_OWN = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "hydra"}
KIND = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    Any: "a value",
}
# a value the check cannot see yet: ??? (given by the user) or ${hydra:...} (outside an app)
UNSET = object()


class ConfigError(ValueError):
    """A composed config that must not run: `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
            + "\n  ".join(problems)
        )


def allowed(description: str = "{kind}", test: Callable[[Any], bool] = lambda v: True) -> Any:
    """A schema field: a set value must pass `test`; `description` ("{kind} >= 1") says what is allowed."""
    return field(default=MISSING, metadata={"allowed": description, "test": test})


def at_least(n: float) -> Any:
    return allowed(f"{{kind}} >= {n}", lambda v: v >= n)


def above(n: float) -> Any:
    return allowed(f"{{kind}} > {n}", lambda v: v > n)


def fraction() -> Any:
    return allowed("{kind} in (0, 1]", lambda v: 0 < v <= 1)


def one_of(*choices: str) -> Any:
    return allowed(" | ".join(choices), lambda v: v in choices)


BATCHES = "an integer >= 1 (batches) or a number in (0, 1] (of an epoch)"


def is_batches_or_fraction(value: Any) -> bool:
    """Lightning's `limit_*_batches`, `val_check_interval`: a count of batches or a fraction of an epoch."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)


def group(schema: type) -> Any:
    return field(default_factory=schema)


@dataclass
class DataModule:
    """`datamodule` (slmlab.data.datamodule.SpeechDataModule)."""

    batch_size: int = at_least(1)
    max_tokens: int | None = at_least(1)
    num_workers: int = at_least(0)
    sample_rate: int = at_least(1)
    max_duration: float | None = above(0)
    on_wrong_rate: str = one_of("resample", "reject")
    on_duration_mismatch: str = one_of("correct", "reject")
    bucket_batches: int = at_least(1)
    seed: int = allowed("{kind} in [0, 2**32)", lambda v: 0 <= v < 2**32)
    context_turns: int = at_least(0)


@dataclass
class Trainer:
    """`trainer` (lightning.pytorch.Trainer): a run that would train 0 steps is refused."""

    max_steps: int = allowed(
        "{kind} >= 1 (0 trains nothing; the schedule needs a length)", lambda v: v >= 1
    )
    max_epochs: int | None = allowed("-1 (no limit) or {kind} >= 1", lambda v: v == -1 or v >= 1)
    limit_train_batches: Any = allowed(BATCHES + "; 0 trains nothing", is_batches_or_fraction)
    limit_val_batches: Any = allowed(
        "0 (no validation), " + BATCHES, lambda v: v == 0 or is_batches_or_fraction(v)
    )
    val_check_interval: Any = allowed(BATCHES, is_batches_or_fraction)
    num_nodes: int = at_least(1)
    accumulate_grad_batches: int = at_least(1)
    log_every_n_steps: int = at_least(1)
    gradient_clip_val: float | None = at_least(0)
    num_sanity_val_steps: int = at_least(-1)


@dataclass
class Optimizer:
    """`model.task.optimizer` (torch.optim.AdamW by default)."""

    lr: float = above(0)
    weight_decay: float = at_least(0)
    betas: Any = allowed(
        "two numbers in [0, 1)",
        lambda v: isinstance(v, list) and len(v) == 2 and all(0 <= b < 1 for b in v),
    )
    fused: bool | None = allowed()  # null: fused on CUDA, foreach elsewhere (SLMTask)


@dataclass
class Scheduler:
    """`model.task.scheduler` (a warm-up, then a decay over `num_training_steps`)."""

    num_warmup_steps: int = at_least(0)
    num_training_steps: int = at_least(1)


@dataclass
class Generation:
    """Decoding settings (`model.task.generation`, slmlab-generate's `generation`); other keys go to
    transformers' generate()."""

    other_keys: ClassVar[bool] = True
    max_new_tokens: int | None = at_least(1)
    min_new_tokens: int | None = at_least(0)
    num_beams: int | None = at_least(1)
    do_sample: bool | None = allowed()
    temperature: float | None = above(0)
    top_p: float | None = fraction()
    topk: int | None = at_least(1)
    max_seconds: float | None = above(0)
    ctc_weight: float | None = allowed(
        "{kind} in [0, 1]", lambda v: 0 <= v <= 1
    )  # speechlm: joint decoding
    ctc_candidates: int | None = at_least(1)


@dataclass
class Sizes:
    """A network's sizes, in each arm's own names (model.task.net, its backbone, decoder, encoder);
    other keys are the architecture's other settings."""

    other_keys: ClassVar[bool] = True
    hidden_size: int = at_least(1)
    num_layers: int = at_least(1)
    num_heads: int = at_least(1)
    num_kv_heads: int = at_least(1)
    intermediate_size: int = at_least(1)
    max_positions: int = at_least(1)
    embed_dim: int = at_least(1)  # torchtune (csm)
    intermediate_dim: int = at_least(1)
    max_seq_len: int = at_least(1)
    num_hidden_layers: int = at_least(1)  # transformers (speechlm's encoder and decoder)
    num_attention_heads: int = at_least(1)
    num_key_value_heads: int = at_least(1)
    max_position_embeddings: int = at_least(1)
    n_embd: int = at_least(1)  # gpt2
    n_layer: int = at_least(1)
    n_head: int = at_least(1)
    n_positions: int = at_least(1)
    d_model: int = at_least(1)  # whisper
    encoder_layers: int = at_least(1)
    encoder_attention_heads: int = at_least(1)
    encoder_ffn_dim: int = at_least(1)
    num_mel_bins: int = at_least(1)
    attn_implementation: str = one_of("sdpa", "flash_attention_2", "eager")  # transformers


@dataclass
class Net(Sizes):
    """`model.task.net`: sizes, and speechlm's stacking, projector, CTC weight and compressor."""

    stack_factor: int = at_least(1)
    projector: str = one_of("swiglu", "mlp", "linear")
    projector_norm_eps: float | None = at_least(0)
    ctc_weight: float = at_least(0)
    compressor: str = one_of("stack", "ctc")
    backbone: Sizes = group(Sizes)  # csm
    decoder: Sizes = group(Sizes)  # csm, speechlm
    encoder: Sizes = group(Sizes)  # speechlm


@dataclass
class Task:
    """`model.task` (the arm's LightningModule)."""

    decoder_fraction: float = fraction()  # csm: the frames its audio decoder trains on
    audio_vocab_size: int | None = at_least(1)
    sample_rate: int = at_least(1)
    optimizer: Optimizer = group(Optimizer)
    scheduler: Scheduler = group(Scheduler)
    net: Net = group(Net)
    generation: Generation = group(Generation)


@dataclass
class Model:
    """`model`: the arm."""

    name: str = allowed()
    report_order: int = allowed()
    fields: Any = allowed()
    speech_tokenizers: Any = allowed()
    recipe: Any = allowed()  # regime=recipe: {part: {into: <key under model.task>, ...}}
    task: Task = group(Task)


@dataclass
class Judge:
    """`eval.judge`: the ASR that scores speech outputs."""

    epochs: int = at_least(1)
    batch_size: int = at_least(1)
    lr: float = above(0)
    lexicon: bool = allowed()
    max_hours: float = above(0)  # of train audio it is fitted on


@dataclass
class StyleClassifier:
    crop_seconds: float = above(0)
    max_hours: float = above(0)


@dataclass
class FewShot:
    """`eval.few_shot`: Spirit LM's few-shot ASR and TTS prompts."""

    shots: int = at_least(0)
    seed: int = at_least(0)


@dataclass
class Eval:
    """`eval`: the arguments of slmlab.eval.evaluate.Evaluator (its settings and its judges)."""

    takes: ClassVar[str] = "slmlab.eval.evaluate.Evaluator"

    judge: Judge = group(Judge)
    style_classifier: StyleClassifier = group(StyleClassifier)
    utterances: int = at_least(1)
    style_prompts: int = at_least(0)
    probe_pairs: int | None = at_least(1)
    continuation_seconds: float = above(0)
    max_seconds: float = above(0)
    tensorboard_samples: int = at_least(0)
    few_shot: FewShot = group(FewShot)
    split: str = one_of("test", "val")


@dataclass
class UnitVocoderFit:
    """`tokenizer.speech.decoder`: the unit vocoder's fit; its other keys are the fit's arguments."""

    other_keys: ClassVar[bool] = True
    max_hours: float = above(0)  # of train audio it is fitted on


@dataclass
class TokenizerFit:
    """`tokenizer.text`, `tokenizer.speech`: a tokenizer fitted on the corpus (or loaded); its other keys
    are its target's arguments."""

    other_keys: ClassVar[bool] = True
    max_hours: float = above(0)  # of train audio it is fitted on
    max_frames: int = at_least(1)  # sampled from that audio for k-means
    decoder: UnitVocoderFit = group(UnitVocoderFit)


@dataclass
class Tokenizers:
    other_keys: ClassVar[bool] = True
    text: TokenizerFit = group(TokenizerFit)
    speech: TokenizerFit = group(TokenizerFit)


@dataclass
class PeriodicCheckpoint:
    """`callbacks.periodic_checkpoint` (slmlab.tasks.callbacks.PeriodicCheckpoint)."""

    every_n_train_steps: int = at_least(1)


@dataclass
class Callbacks:
    """`callbacks`: any Lightning callbacks, each checked against its target's arguments."""

    other_keys: ClassVar[bool] = True
    periodic_checkpoint: PeriodicCheckpoint = group(PeriodicCheckpoint)


@dataclass
class Paths:
    root_dir: str = allowed()
    data_dir: str = allowed()
    log_dir: str = allowed()
    output_dir: str = allowed()


@dataclass
class TrainConfig:
    """conf/train.yaml (and prepare.yaml)."""

    task_name: str = allowed()
    seed: int = allowed("{kind} in [0, 2**32)", lambda v: 0 <= v < 2**32)
    threads: int | None = at_least(1)
    compile: bool = allowed()
    resume: str = one_of("auto", "never")
    ckpt_path: str | None = allowed()
    regime: str = one_of("from_scratch", "recipe")
    pretrain: Any = allowed()
    test: bool = allowed()
    evaluate: bool = allowed()
    datamodule: DataModule = group(DataModule)
    trainer: Trainer = group(Trainer)
    model: Model = group(Model)
    eval: Eval = group(Eval)
    paths: Paths = group(Paths)
    data: Any = allowed()
    tokenizer: Tokenizers = group(Tokenizers)
    callbacks: Callbacks = group(Callbacks)
    logger: Any = allowed()


@dataclass
class EvaluateConfig:
    """conf/evaluate.yaml."""

    task_name: str = allowed()
    ckpt_path: str = allowed()
    generation: Generation = group(Generation)
    eval: Eval = group(Eval)
    paths: Paths = group(Paths)


@dataclass
class GenerateConfig:
    """conf/generate.yaml."""

    task_name: str = allowed()
    seed: int = allowed("{kind} in [0, 2**32)", lambda v: 0 <= v < 2**32)
    ckpt_path: str = allowed()
    audio: str | None = allowed()
    text: str | None = allowed()
    modality: str = one_of("TEXT", "SPEECH", "ARBITRARY")
    speaker: str | None = allowed()
    generation: Generation = group(Generation)
    paths: Paths = group(Paths)


@dataclass
class Study:
    """`study` (conf/study/<name>.yaml): the report's name, its question and the commands that reproduce it."""

    name: str = allowed()
    question: str = allowed()
    commands: Any = allowed("a list of commands", lambda v: isinstance(v, list))


@dataclass
class CompareConfig:
    """conf/compare.yaml."""

    task_name: str = allowed()
    sweep_dir: str | None = allowed()
    out_dir: str = allowed()
    project_readme: str | None = allowed()
    study: Study = group(Study)
    paths: Paths = group(Paths)


@dataclass
class ConvertConfig:
    """conf/convert.yaml."""

    task_name: str = allowed()
    input: str = allowed()
    output: str = allowed()
    to: str = one_of(
        "slmlab", "sesame", "transformers", "ultravox", "ultravox_projector", "spiritlm"
    )
    paths: Paths = group(Paths)


SCHEMAS = {
    "train": TrainConfig,
    "convert": ConvertConfig,
    "prepare": TrainConfig,
    "evaluate": EvaluateConfig,
    "generate": GenerateConfig,
    "compare": CompareConfig,
}


def check_config(cfg: DictConfig, config_name: str = "train") -> None:
    """Raise ConfigError listing every bad value and unknown key of `cfg`, composed from
    conf/<config_name>.yaml; values still to be given (???) are left to the run."""
    problems = check_values(SCHEMAS[config_name], cfg, "")
    problems += check_targets(OmegaConf.to_container(cfg, resolve=False), "")
    if problems:
        raise ConfigError(problems)


def check_values(schema: type, node: DictConfig, path: str) -> list[str]:
    """The problems of `node` (at `path`) against `schema`: types, ranges, and unknown keys where
    `node` has no `_target_` and the schema lists all its keys."""
    problems = []
    declared = {f.name: f for f in fields(schema)}
    if getattr(schema, "takes", None):  # keys that are a callable's arguments
        problems += unknown_arguments(OmegaConf.to_container(node), schema.takes, path)
    elif "_target_" not in node and not getattr(schema, "other_keys", False):
        for key in node:
            if key not in declared and key not in HYDRAS_OWN:
                problems.append(unknown_key(key, node.get(key), path, sorted(declared)))
    hints = typing.get_type_hints(schema)
    typed = OmegaConf.structured(schema)  # OmegaConf's typed nodes: conversion, or a type error
    for key, spec in declared.items():
        if key not in node or OmegaConf.is_missing(node, key):  # ???: the run asks for it
            continue
        if OmegaConf.is_interpolation(node, key):  # a copy: checked where it is set
            continue
        name, value = f"{path}{key}", node[key]
        if is_dataclass(hints[key]):  # a group of keys, with its own schema
            if isinstance(value, DictConfig):
                problems += check_values(hints[key], value, f"{name}.")
            elif value is not None:
                problems.append(f"{name}={show(value)}: not a group of keys")
        else:
            problems += check_value(name, value, typed, key, hints[key], spec.metadata)
    return problems


def check_value(
    name: str, value: Any, typed: DictConfig, key: str, hint: Any, rule: dict
) -> list[str]:
    """[] or the problem of one value: its type (set as `typed[key]`, of type `hint`), then its range
    (`rule["test"]`, described by `rule["allowed"]`)."""
    kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    allowed = rule["allowed"].format(kind=KIND[kind])
    if type(None) in typing.get_args(hint):
        allowed += ", or null"
    if isinstance(value, (DictConfig, ListConfig)):
        value = plain(value)
        if value is UNSET:
            return []
    try:
        typed[key] = value
    except ValidationError:
        return [f"{name}={show(value)}: not {KIND[kind]}; allowed: {allowed}"]
    converted = value if kind is Any else typed[key]
    if converted is None or rule["test"](converted):
        return []
    return [f"{name}={show(value)}: out of range; allowed: {allowed}"]


def check_targets(node: Any, path: str) -> list[str]:
    """The problems of every `_target_` node in `node` (a plain container, unresolved): a target
    that does not import, or a key that is none of its arguments (instantiate would fail only after
    the corpus is made and the tokenizers are fitted)."""
    if isinstance(node, list):
        return [p for i, item in enumerate(node) for p in check_targets(item, f"{path}{i}.")]
    if not isinstance(node, dict):
        return []
    problems = unknown_arguments(node, node["_target_"], path) if "_target_" in node else []
    for key, value in node.items():
        if key != "hydra":
            problems += check_targets(value, f"{path}{key}.")
    return problems


def unknown_arguments(node: dict, target: str, path: str) -> list[str]:
    """The keys of `node` that are none of the arguments of `target` (a dotted path)."""
    try:
        parameters = inspect.signature(get_object(target)).parameters
    except Exception as error:  # ImportError, AttributeError, ...: whatever the import raises
        return [f"{path}_target_={show(target)}: cannot be imported ({error})"]
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return []
    return [
        unknown_key(key, value, path, list(parameters), target)
        for key, value in node.items()
        if key not in parameters and key not in HYDRAS_OWN
    ]


def unknown_key(key: str, value: Any, path: str, known: list[str], target: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    takes = f"the arguments of {target}: " if target else ""
    return f"{path}{key}={show(value)}: unknown key{hint}; allowed: {takes}" + ", ".join(
        k for k in known if k not in ("self", "args", "kwargs")
    )


def plain(node: DictConfig | ListConfig) -> Any:
    """A list or dict node as a plain one, resolved; UNSET where that needs a value still to come
    (??? or Hydra's runtime, outside an app)."""
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationResolutionError):
        return UNSET


def show(value: Any) -> str:
    """A value as the command line would write it, cut to 60 characters."""
    text = "???" if value is UNSET else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

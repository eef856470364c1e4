"""Released checkpoints in and out: one module per arm (`csm.py`, `spiritlm.py`, `speechlm.py`), each
reading and writing the layouts its family's releases use, behind `slmlab-convert`.

Every module exposes the same three things, so `convert` dispatches without a central list (a module
here is found by its name, which the run's `model.name` starts with):

    FORMATS                         -> the names `to=` accepts for this arm ("sesame", "transformers", ...)
    detect(path) -> str | None      -> the format of a checkpoint at `path`, None when it is not this arm's
    import_checkpoint(path)         -> our plain nn.Module (or a tuple starting with it) with its weights
    export_checkpoint(model, out, fmt)   model: the module (or the run's task where the module sets
                                         EXPORT_TAKES_TASK, as a layout may need the tokenizers too)

`load_matching` is the one place a converted state dict meets a module: it names the first key whose
shape does not fit, and every key that is missing or left over, instead of torch's list of all of them,
each as the checkpoint's file names it (a converter that renames keys passes its renaming).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


def load_matching(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    file_name: Callable[[str], str] | None = None,
) -> None:
    """`module.load_state_dict(state, strict=True)`, refusing first with the first mismatching key.

    source: where `state` came from (a path), for the message; file_name: our key -> the name it has in
    that file, where the converter renamed it (the message gives both)."""

    def named(key: str) -> str:
        theirs = file_name(key) if file_name is not None else key
        return key if theirs == key else f"{theirs} (ours: {key})"

    expected = module.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{source}: {named(key)} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[key].shape)} (is the size preset the checkpoint's?)"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: {len(missing)} keys missing (first: {[named(k) for k in missing[:1]]}), "
            f"{len(unexpected)} keys not in the model (first: {[named(k) for k in unexpected[:1]]})"
        )
    module.load_state_dict(state, strict=True)


def arm_modules() -> dict[str, ModuleType]:
    """The converter of each arm: `slmlab.convert.<arm>` for every module in this package."""
    return {
        info.name: importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    }


def convert(source: str | Path, output: str | Path, to: str) -> Path:
    """`slmlab-convert`: the checkpoint at `source` written to `output` in layout `to`.

    source: a checkpoint of ours (`<run>/checkpoints/*.ckpt`, loaded with its run folder) or a released
    one in any layout an arm's module detects."""
    source, modules = Path(source), arm_modules()
    if source.suffix == ".ckpt":
        from omegaconf import OmegaConf

        from slmlab.runs import load_task  # only here: importing runs loads every arm's code

        name = OmegaConf.load(source.parents[1] / ".hydra" / "config.yaml").model.name
        arm = next((arm for arm in modules if name.startswith(arm)), None)
        found = f"a run of model={name}"
        task = load_task(str(source))
        model = task if getattr(modules.get(arm), "EXPORT_TAKES_TASK", False) else task.net
    else:
        detected = {arm: module.detect(source) for arm, module in modules.items()}
        arm = next((arm for arm, fmt in detected.items() if fmt), None)
        if arm is None:
            raise ValueError(
                f"{source}: not a checkpoint any arm reads (a run's .ckpt, or one of: "
                + "; ".join(f"{a}: {', '.join(m.FORMATS)}" for a, m in modules.items())
                + ")"
            )
        found = f"a {arm} checkpoint in the {detected[arm]} layout"
        imported = modules[arm].import_checkpoint(source)
        model = imported[0] if isinstance(imported, tuple) else imported
    module = modules.get(arm)
    if module is None or to not in module.FORMATS:
        choices = ", ".join(module.FORMATS) if module else "none"
        raise ValueError(f"{source} is {found}; it converts to: {choices} (not to={to})")
    log.info("%s is %s; writing it as %s into %s", source, found, to, output)
    module.export_checkpoint(model, output, to)
    return Path(output)

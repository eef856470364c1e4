"""Released checkpoints in and out: one module per arm (`csm.py`, `spiritlm.py`, `speechlm.py`), each
reading and writing the layouts its family's releases use, behind `slmlab-convert`.

Every module exposes the same three things, so the CLI dispatches without a central list:

    FORMATS                         -> the names `to=` accepts for this arm ("sesame", "transformers", ...)
    detect(path) -> str | None      -> the format of a checkpoint at `path`, None when it is not this arm's
    import_checkpoint(path)         -> our plain nn.Module (and its sizes) with the checkpoint's weights
    export_checkpoint(model, out, fmt)

`load_matching` is the one place a converted state dict meets a module: it names the first key whose
shape does not fit, and every key that is missing or left over, instead of torch's list of all of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)`, refusing first with the first mismatching key.

    source: where `state` came from (a path), for the message."""
    expected = module.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[key].shape)} (is the size preset the checkpoint's?)"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: {len(missing)} keys missing (first: {missing[:1]}), "
            f"{len(unexpected)} keys not in the model (first: {unexpected[:1]})"
        )
    module.load_state_dict(state, strict=True)

"""The training logic every arm shares: optimiser and schedule from config, LM labels, text logging,
model FLOPs per batch (for Lightning's MFU), and what an arm declares about itself (its capabilities for
the evaluator, its FSDP units)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from slmlab.tasks.callbacks import batch_tokens

# the run's tokenizers, passed in as objects by `runs.build` and saved in `<run>/tokenizers/`
TOKENIZER_ARGUMENTS = ("tokenizer", "speech_tokenizer")
FLOPS_FORMULA = "6 x dense_parameters x tokens (Kaplan et al. 2020; no attention term)"


def dense_parameters(module: torch.nn.Module) -> int:
    """Parameters outside embedding tables (`nn.Embedding`): the N of the FLOPs formula."""
    embeddings = {
        id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    return sum(p.numel() for p in module.parameters() if id(p) not in embeddings)


def training_flops(dense: int, tokens: int) -> int:
    """Model FLOPs of one training step of a network of `dense` parameters (`dense_parameters`) over
    `tokens` positions: 6 N D (Kaplan et al. 2020: 2 N per token forward, 4 N backward, for a dense
    transformer; no attention term)."""
    return 6 * dense * tokens


def adamw_kernel(device: torch.device) -> dict:
    """AdamW's implementation for parameters on `device`: torch's fused kernel on CUDA, its foreach
    (multi-tensor) one elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


class SLMTask(L.LightningModule):
    """Subclasses build `self.net` and implement `training_step` / `validation_step`.

    capabilities: what the evaluator may ask of the arm (`slmlab.tasks.protocol`); speaks: whether it
    turns speech tokens into waveforms (an instance may decide, e.g. from its vocoder).

    optimizer: a partial (Hydra `_partial_: true`) taking the parameters; scheduler: a partial taking
    the optimizer, stepped every optimisation step (e.g. transformers' `get_cosine_schedule_with_warmup`).
    An optimizer configured with `fused: null` gets `adamw_kernel` for the device it runs on.

    flops_per_batch: the model FLOPs of the training batch just run (`training_flops` of its tokens,
    `callbacks.batch_tokens`), which Lightning's `ThroughputMonitor` turns into FLOPs/s and MFU; also
    logged as `train/flops_per_batch`.

    Every `__init__` argument of the arm but its tokenizers is a hyperparameter (Lightning's
    `save_hyperparameters`: `self.hparams`, `checkpoint["hyper_parameters"]`), kept as plain data so that
    checkpoints load with weights_only: a partial as the Hydra config that rebuilds it.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    speaks: bool = False

    def __init__(self, optimizer, scheduler=None) -> None:
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.save_hyperparameters(ignore=TOKENIZER_ARGUMENTS, logger=False)
        self.hparams.update({name: as_data(value, name) for name, value in self.hparams.items()})
        self.num_dense_parameters: int | None = None
        self._train_batch: dict | None = None

    def setup(self, stage: str) -> None:
        """Count the dense parameters before a strategy shards them (FSDP)."""
        self.num_dense_parameters = dense_parameters(self)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._train_batch = batch  # the training step adds `num_tokens` to it

    @property
    def flops_per_batch(self) -> int | None:
        """Model FLOPs of the training batch being run; None outside a training batch (validation,
        test), which the ThroughputMonitor then counts no FLOPs for."""
        if self._train_batch is None:
            return None
        return training_flops(self.num_dense_parameters, batch_tokens(self._train_batch))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # after every callback's on_train_batch_end (the ThroughputMonitor's read of flops_per_batch)
        self.log("train/flops_per_batch", float(self.flops_per_batch), batch_size=1)
        self._train_batch = None

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms and biases
        no_decay = [p for p in params if p.ndim < 2]
        kernel = {}
        keywords = getattr(self.optimizer_factory, "keywords", {})
        if "fused" in keywords and keywords["fused"] is None:
            kernel = adamw_kernel(self.device)
        optimizer = self.optimizer_factory(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **kernel
        )
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

    def log_text(self, tag: str, text: str) -> None:
        """A Markdown text sample in TensorBoard (ignored by other loggers)."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.global_rank == 0:
                logger.experiment.add_text(tag, text, self.global_step)

    @staticmethod
    def lm_labels(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L], lengths [B] -> (attention_mask [B, L], labels [B, L] with -100 on padding)."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return mask.long(), ids.masked_fill(~mask, -100)

    @classmethod
    def fsdp_block_classes(cls) -> set[type]:
        """The module classes FSDP wraps one by one (`strategy=fsdp`): the arm's transformer blocks."""
        return set()


def as_data(value: Any, name: str) -> Any:
    """A hyperparameter as plain data: OmegaConf nodes as containers, a partial as its Hydra config
    (`_target_`, `_partial_`, its keywords), a class or function as its dotted name."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, functools.partial):
        keywords = {k: as_data(v, f"{name}.{k}") for k, v in value.keywords.items()}
        return {"_target_": as_data(value.func, name), "_partial_": True, **keywords}
    if inspect.isclass(value) or inspect.isroutine(value):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, dict):
        return {k: as_data(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_data(v, name) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"task argument {name}={type(value).__name__}(...) is not a hyperparameter: pass plain data, a "
        f"partial or a callable (the run's tokenizers go in as {' / '.join(TOKENIZER_ARGUMENTS)})"
    )


def fsdp_block_classes(task: str) -> set[type]:
    """`strategy=fsdp`'s wrap policy: the blocks the task class at the dotted path `task` declares."""
    return get_class(task).fsdp_block_classes()

"""GPU readiness, checked on CPU (no GPU here): model FLOPs and MFU logged for every arm training in
bf16-mixed, attention through torch's SDPA, `compile=true`, and AdamW's fused kernel chosen on CUDA."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger

from slmlab.config_checks import ConfigError
from slmlab.runs import build, compose
from slmlab.tasks.base import SLMTask
from slmlab.tasks.callbacks import batch_tokens

ARMS = ["tiny_text_lm", "tiny_spiritlm_base", "tiny_csm", "tiny_speechlm"]
STEPS = 3
# a made-up device peak (FLOP/s): there is no GPU here, and Lightning's table has no CPU entry
PEAK = 1.0e12


class RecordingLogger(Logger):
    """Every `log_metrics` call kept in memory, in order."""

    name, version = "recording", 0

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict] = []

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append(dict(metrics))

    def series(self, key: str) -> list[float]:
        return [metrics[key] for metrics in self.logged if key in metrics]


class BatchRecord(L.Callback):
    """Per training batch: its tokens (as the throughput callbacks count them) and the calls to torch's
    scaled_dot_product_attention (`calls`: a counter the patched function increments); and the dtypes
    the device's peak was looked up for."""

    def __init__(self, calls: list[int]) -> None:
        self.calls, self.tokens, self.sdpa_calls, self.peak_dtypes = calls, [], [], []

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        self.calls[0] = 0

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        self.tokens.append(batch_tokens(batch))
        self.sdpa_calls.append(self.calls[0])


def counting_sdpa(calls: list[int]):
    sdpa = torch.nn.functional.scaled_dot_product_attention

    @functools.wraps(sdpa)
    def counted(*args, **kwargs):
        calls[0] += 1
        return sdpa(*args, **kwargs)

    return counted


def train_briefly(experiment: str, data_dir, run_dir, peak: float | None, *overrides: str):
    """`experiment` trained STEPS steps with the configured ThroughputMonitor (a 2-batch window), torch's
    SDPA counted, and the device peak Lightning looks up replaced by `peak` (None: the real lookup)
    -> (task, logger, record)."""
    cfg = compose(
        "train",
        [
            f"experiment={experiment}",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={run_dir}",
            "+callbacks.throughput.window_size=2",
            *overrides,
        ],
    )
    datamodule, task = build(cfg)
    calls = [0]
    logger, record = RecordingLogger(), BatchRecord(calls)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa(calls))
        if peak is not None:
            patch.setattr(
                "lightning.pytorch.callbacks.throughput_monitor.get_available_flops",
                lambda device, dtype: record.peak_dtypes.append(dtype) or peak,
            )
        trainer = instantiate(
            cfg.trainer,
            max_steps=STEPS,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            logger=logger,
            callbacks=[instantiate(cfg.callbacks.throughput), record],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, datamodule=datamodule)
    return task, logger, record


@pytest.fixture(scope="module", params=ARMS)
def trained(request, tiny_corpus, data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return train_briefly(request.param, data_dir, run_dir, PEAK, "precision=bf16-mixed")


def test_every_arm_logs_six_n_d_model_flops_per_batch(trained):
    """train/flops_per_batch = 6 x (parameters outside embedding tables) x the batch's tokens."""
    task, logger, record = trained
    embeddings = sum(m.weight.numel() for m in task.modules() if isinstance(m, torch.nn.Embedding))
    dense = sum(p.numel() for p in task.parameters()) - embeddings
    expected = [6 * dense * tokens for tokens in record.tokens]
    assert len(expected) == STEPS and len(set(record.tokens)) > 1  # batches of different lengths
    assert logger.series("train/flops_per_batch") == pytest.approx(expected, rel=1e-6)


def test_every_arm_logs_mfu_as_model_flops_per_second_over_the_device_peak(trained):
    """Lightning's ThroughputMonitor over a 2-batch window: FLOPs/s = this batch's model FLOPs over the
    time since the previous batch; MFU = FLOPs/s / the device's peak (mocked: no GPU here)."""
    task, logger, record = trained
    assert record.peak_dtypes == [torch.bfloat16]  # bf16-mixed: the device's bf16 peak
    flops = logger.series("train/flops_per_batch")
    rows = [metrics for metrics in logger.logged if "train/time" in metrics]
    assert len(rows) == STEPS
    for i in range(1, STEPS):
        flops_per_second = rows[i]["train/device/flops_per_sec"]
        seconds = rows[i]["train/time"] - rows[i - 1]["train/time"]
        assert flops_per_second == pytest.approx(flops[i] / seconds, rel=1e-6)
        assert rows[i]["train/device/mfu"] == pytest.approx(flops_per_second / PEAK, rel=1e-6)


def test_every_arm_attends_through_torch_sdpa(trained):
    """Each attention module of the arm (transformers' and torchtune's) calls
    torch.nn.functional.scaled_dot_product_attention once per training forward."""
    task, logger, record = trained
    attention = [m for m in task.modules() if type(m).__name__.endswith("Attention")]
    assert attention
    assert record.sdpa_calls == [len(attention)] * STEPS


def test_cpu_has_no_known_peak_and_logs_flops_per_second_without_mfu(
    tiny_corpus, data_dir, tmp_path
):
    task, logger, record = train_briefly("tiny_text_lm", data_dir, tmp_path, None)
    assert len(logger.series("train/device/flops_per_sec")) == STEPS - 1
    assert logger.series("train/device/mfu") == []


def test_eager_attention_is_configurable_and_bypasses_sdpa(tiny_corpus, data_dir, tmp_path):
    task, logger, record = train_briefly(
        "tiny_text_lm", data_dir, tmp_path, None, "model.task.net.attn_implementation=eager"
    )
    assert task.net.config._attn_implementation == "eager"
    assert record.sdpa_calls == [0] * STEPS


def test_compile_true_compiles_the_network_in_place(tiny_corpus, data_dir, tmp_path, monkeypatch):
    """`compile=true` puts the arm's net through torch.compile (here with a recording backend that runs
    the captured graphs as they are: Inductor's C++ code generation works on this CPU but takes minutes
    for one model); the checkpoint keys stay the uncompiled net's."""
    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(
        torch, "compile", functools.partial(torch.compile, backend=recording_backend)
    )
    keys = {}
    for compiled in (False, True):
        graphs.clear()
        task, logger, record = train_briefly(
            "tiny_text_lm",
            data_dir,
            tmp_path / str(compiled),
            None,
            f"compile={str(compiled).lower()}",
        )
        keys[compiled] = list(task.state_dict())
        assert bool(graphs) == compiled
    assert keys[True] == keys[False]


class Linear(SLMTask):
    def __init__(self, optimizer) -> None:
        super().__init__(optimizer)
        self.net = torch.nn.Linear(4, 4)


@pytest.mark.parametrize(
    "device,fused,kernel",
    [
        ("cuda", None, {"fused": True, "foreach": None}),
        ("cpu", None, {"fused": None, "foreach": True}),
        ("cuda", False, {"fused": False, "foreach": None}),  # set in the config: kept
    ],
)
def test_adamw_is_fused_on_cuda_and_foreach_elsewhere(device, fused, kernel):
    """The task's device is mocked (no GPU here); torch builds a fused AdamW over CPU tensors too."""
    optimizer = compose("train").model.task.optimizer  # conf/optim/adamw_cosine.yaml
    optimizer.fused = fused
    task = Linear(instantiate(optimizer))
    task._device = torch.device(device, 0) if device == "cuda" else torch.device(device)
    adamw = task.configure_optimizers()  # no scheduler: the optimizer alone
    assert {key: adamw.defaults[key] for key in kernel} == kernel


@pytest.mark.parametrize(
    "overrides,named,allowed",
    [
        (["compile=fast"], "compile='fast'", "true or false"),
        (
            ["model.task.optimizer.fused=maybe"],
            "model.task.optimizer.fused='maybe'",
            "true or false",
        ),
        (
            ["model.task.net.attn_implementation=flash"],
            "model.task.net.attn_implementation='flash'",
            "sdpa | flash_attention_2 | eager",
        ),
        (
            ["model=speechlm", "model.task.net.decoder.attn_implementation=flex"],
            "model.task.net.decoder.attn_implementation='flex'",
            "sdpa | flash_attention_2 | eager",
        ),
    ],
)
def test_a_bad_gpu_setting_names_its_key_and_what_is_allowed(overrides, named, allowed):
    with pytest.raises(ConfigError) as error:
        compose("train", overrides)
    line = next(line for line in str(error.value).splitlines() if named in line)
    assert allowed in line.split(named, 1)[1], str(error.value)

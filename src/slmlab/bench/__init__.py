"""Benchmarks for `slmlab-bench`: each compares our code with a baseline doing the same work on the same
inputs, measured in the same run, with all preparation outside the timed region; or, where there is no
such baseline, times ours alone (a plain timing: `baseline` and `ratio` are None). `train_cost` measures
every arm of the comparison study alone (`slmlab.bench.cost`).

A benchmark is a function `(steps: int) -> list[dict]` returning rows
`{"benchmark", "setting", "ours", "baseline", "unit", "ratio", ...}`; `ratio` > 1 means ours is better;
an optional `summary` is a line of further figures for the terminal.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

BENCHMARKS = {
    "speechlm_train_step": "slmlab.bench.speechlm:train_step_vs_qwen2_audio",
    "spiritlm_tokenize": "slmlab.bench.spiritlm:tokenization_vs_hubert",
    "spiritlm_train_step": "slmlab.bench.spiritlm:train_step_vs_prebuilt",
    "csm_train_step": "slmlab.bench.csm:train_step_vs_transformers",
    "csm_generate": "slmlab.bench.csm:generation_vs_transformers",
    "train_cost": "slmlab.bench.cost:train_cost",
}


def median_seconds(
    candidates: dict[str, Callable[[], None]], steps: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time of each callable, run in alternation (A B A B ...) so drift hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(steps):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}

"""95% intervals for the study's metrics: a bootstrap over test items, combined with the spread over seeds.

Every metric is a ratio of sums over items, `value = f(sum(num) / sum(den))`: WER is word edits over
reference words, perplexity exp(nats over tokens), a probe's accuracy wins over pairs. The evaluator stores
each item's `(num, den)` with its id (`metrics.json` `eval.items`), so an interval can be drawn for one run,
for an arm over seeds, and for the difference of two arms on the same items (a paired bootstrap).

One replicate draws the test items with replacement (the same draw for every seed and arm: they are scored
on the same items) and, where an arm has several seeds, its seeds with replacement; the interval is the
2.5th and 97.5th percentile of the replicates (the percentile bootstrap of Efron & Tibshirani, ch. 13).
This replaces a normal approximation, which is wrong for ratios near 0 or 1 such as WER and accuracy.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def metric_value(name: str, num, den) -> float:
    """The metric from its items: sum(num) / sum(den), and for perplexity exp of that."""
    ratio = float(np.sum(num)) / max(float(np.sum(den)), 1e-12)
    return math.exp(ratio) if name == "text_ppl" else ratio


def _aligned(runs: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """Items of several runs ({"ids", "num", "den"}) on the ids all of them share -> num, den [S, N]."""
    if not runs or any(not r or not r.get("ids") for r in runs):
        return None
    shared = set(runs[0]["ids"]).intersection(*(r["ids"] for r in runs[1:]))
    ids = [i for i in runs[0]["ids"] if i in shared]
    if not ids:
        return None
    nums, dens = [], []
    for run in runs:
        where = {item: k for k, item in enumerate(run["ids"])}
        nums.append([run["num"][where[i]] for i in ids])
        dens.append([run["den"][where[i]] for i in ids])
    return np.asarray(nums, dtype=float), np.asarray(dens, dtype=float)


def _replicates(name: str, num: np.ndarray, den: np.ndarray, items, seeds) -> np.ndarray:
    """The metric, averaged over the drawn seeds, for each replicate's drawn items. -> [R]"""
    num_sums = num[:, items].sum(axis=2)  # [S, R]: each seed's sums over the drawn items
    den_sums = np.maximum(den[:, items].sum(axis=2), 1e-12)
    values = num_sums / den_sums
    if name == "text_ppl":
        values = np.exp(values)
    return np.take_along_axis(values, seeds, axis=0).mean(axis=0)


def _draws(items: int, seeds: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Item indices [R, N] and seed indices [S, R] of RESAMPLES replicates."""
    drawn_items = rng.integers(0, items, size=(RESAMPLES, items))
    drawn_seeds = (
        rng.integers(0, seeds, size=(seeds, RESAMPLES))
        if seeds > 1
        else np.zeros((1, RESAMPLES), dtype=int)
    )
    return drawn_items, drawn_seeds


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval(name: str, runs: list[dict], seed: int = 0) -> tuple[float, float] | None:
    """95% interval of the metric `name` averaged over `runs` (one arm's seeds, each {"ids", "num",
    "den"}), on the items they share; None when a run has no items."""
    aligned = _aligned(runs)
    if aligned is None:
        return None
    num, den = aligned
    rng = np.random.default_rng(seed)
    items, seeds = _draws(num.shape[1], num.shape[0], rng)
    return _percentiles(_replicates(name, num, den, items, seeds))


def paired_difference(
    name: str, runs_a: list[dict], runs_b: list[dict], seed: int = 0
) -> tuple[float, float, float] | None:
    """(A - B, its 95% interval) of the metric `name`, arm A's seeds against arm B's, by a paired bootstrap
    on the items both were scored on; None when they share none."""
    aligned = _aligned([*runs_a, *runs_b])
    if aligned is None:
        return None
    num, den = aligned
    a, b = len(runs_a), len(runs_b)
    rng = np.random.default_rng(seed)
    items, seeds_a = _draws(num.shape[1], a, rng)
    _, seeds_b = _draws(num.shape[1], b, rng)
    difference = _replicates(name, num[:a], den[:a], items, seeds_a) - _replicates(
        name, num[a:], den[a:], items, seeds_b
    )
    observed = _mean_over_seeds(name, num[:a], den[:a]) - _mean_over_seeds(name, num[a:], den[a:])
    return (observed, *_percentiles(difference))


def _mean_over_seeds(name: str, num: np.ndarray, den: np.ndarray) -> float:
    """The metric of each seed on all items, averaged over seeds (the report's mean)."""
    return float(np.mean([metric_value(name, n, d) for n, d in zip(num, den)]))

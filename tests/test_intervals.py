"""The study's 95% intervals (slmlab.eval.intervals) and the per-item records they resample."""

import random

import pytest

from slmlab.eval.intervals import interval, metric_value, paired_difference
from slmlab.eval.metrics import error_rates, item_errors


def _items(num: list[float], den: list[float] | None = None) -> dict:
    return {"ids": [f"u{i}" for i in range(len(num))], "num": num, "den": den or [1.0] * len(num)}


def _coin(p: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


def test_per_item_edits_add_up_to_the_corpus_wer_and_cer():
    references = ["the cat sat on the mat", "a dog", "birds sing at dawn", "go"]
    hypotheses = ["the cat sat the mat", "a dog barks", "", "go go"]
    counts = item_errors(hypotheses, references)
    corpus = error_rates(hypotheses, references)
    for name in ("wer", "cer"):
        edits, lengths = counts[name]
        assert metric_value(name, edits, lengths) == pytest.approx(corpus[name])
    assert counts["wer"] == ([1, 1, 4, 1], [6, 2, 4, 1])


def test_the_interval_narrows_as_the_square_root_of_the_items():
    small = interval("acc", [_items(_coin(0.7, 200, 0))])
    large = interval("acc", [_items(_coin(0.7, 800, 1))])
    assert small[0] < 0.7 < small[1] and large[0] < 0.7 < large[1]
    ratio = (small[1] - small[0]) / (large[1] - large[0])
    assert 1.6 < ratio < 2.4  # four times the items: half the width


def test_the_interval_of_a_binomial_matches_its_standard_error():
    """200 items at p = 0.7: the normal approximation's half-width is 1.96 * sqrt(p(1-p)/n) = 0.064."""
    low, high = interval("acc", [_items(_coin(0.7, 200, 2))])
    assert (high - low) / 2 == pytest.approx(0.0635, abs=0.01)


def test_the_spread_over_seeds_widens_the_interval():
    same = [_items(_coin(0.6, 100, 3))] * 3
    spread = [_items(_coin(p, 100, 3)) for p in (0.45, 0.6, 0.75)]  # the same items, other seeds
    one = interval("acc", same)
    many = interval("acc", spread)
    assert (many[1] - many[0]) > 1.5 * (one[1] - one[0])


def test_perplexity_is_resampled_in_nats_and_reported_exponentiated():
    low, high = interval("text_ppl", [_items([2.0, 3.0, 2.5, 2.2] * 10, [1.0] * 40)])
    assert 7 < low < metric_value("text_ppl", [2.0, 3.0, 2.5, 2.2], [1.0] * 4) < high < 14


def test_a_paired_interval_finds_a_small_difference_that_separate_intervals_miss():
    """Arm B makes one more edit than arm A on an utterance on average, while the utterances vary a lot:
    their own intervals overlap, but the paired interval of A - B on the same items excludes 0."""
    rng = random.Random(4)
    hard = [rng.choice([1, 5, 10, 15]) for _ in range(60)]
    a = _items(hard, [20.0] * 60)
    b = _items([h + rng.choice([0, 1, 2]) for h in hard], [20.0] * 60)
    interval_a, interval_b = interval("wer", [a]), interval("wer", [b])
    assert interval_a[1] > interval_b[0]  # they overlap
    difference, low, high = paired_difference("wer", [a], [b])
    assert difference == pytest.approx(-0.05, abs=0.01) and low < high < 0


def test_paired_intervals_use_only_the_items_both_arms_were_scored_on():
    a = _items([0.0, 1.0, 1.0, 0.0])
    b = {"ids": ["u1", "u2", "other"], "num": [1.0, 1.0, 0.0], "den": [1.0, 1.0, 1.0]}
    assert paired_difference("acc", [a], [b]) == (0.0, 0.0, 0.0)
    assert paired_difference("acc", [a], [_items([])]) is None
    assert interval("acc", [a, {}]) is None  # a run without items: no interval

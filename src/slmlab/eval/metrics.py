"""The study's metrics on plain Python values, each with the trivial baseline it must beat.

Every function takes model outputs (texts, scores, labels), so each is testable on hand-made cases.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from torchmetrics.functional.text import char_error_rate, word_error_rate


def normalise_text(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces: what WER and CER compare."""
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def error_rates(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus WER and CER (torchmetrics: edits summed over utterances / reference words or characters) of
    normalised texts."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    hyps, refs = [normalise_text(h) for h in hypotheses], [normalise_text(r) for r in references]
    return {"wer": float(word_error_rate(hyps, refs)), "cer": float(char_error_rate(hyps, refs))}


def item_errors(hypotheses: list[str], references: list[str]) -> dict[str, tuple[list, list]]:
    """Per utterance, the edits and the reference length behind WER and CER: {"wer": (word edits, reference
    words), "cer": (character edits, reference characters)}. Their sums' ratio is `error_rates`' corpus
    WER and CER; the intervals resample them (slmlab.eval.intervals)."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    counts = {"wer": ([], []), "cer": ([], [])}
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = normalise_text(hypothesis), normalise_text(reference)
        for name, rate, length in (
            ("wer", word_error_rate, len(ref.split())),
            ("cer", char_error_rate, len(ref)),
        ):
            counts[name][0].append(round(float(rate([hyp], [ref])) * length))
            counts[name][1].append(length)
    return counts


def pair_wins(good_scores: list[float], bad_scores: list[float]) -> list[float]:
    """Per probe pair, 1 when the good item scores higher, 0.5 on a tie, else 0 (their mean is
    `pair_accuracy`)."""
    if len(good_scores) != len(bad_scores) or not good_scores:
        raise ValueError(f"{len(good_scores)} good and {len(bad_scores)} bad scores")
    return [1.0 if g > b else 0.5 if g == b else 0.0 for g, b in zip(good_scores, bad_scores)]


def trivial_error_rates(
    references: list[str], training_texts: list[str], seed: int = 0
) -> dict[str, float | str]:
    """The best WER and CER a system reaches without listening or reading: per metric, the better of an empty
    output (WER 1), a constant one (the most frequent training word) and a random training sentence (real
    text of the right kind, which shares characters with any reference), each for every utterance."""
    words = Counter(w for t in training_texts for w in normalise_text(t).split())
    constant = words.most_common(1)[0][0] if words else ""
    rng = random.Random(seed)
    candidates = {
        "empty": {"wer": 1.0, "cer": 1.0},
        f"constant '{constant}'": error_rates([constant] * len(references), references),
    }
    if training_texts:
        candidates["a random training sentence"] = error_rates(
            [rng.choice(training_texts) for _ in references], references
        )
    best = {
        metric: min(candidates, key=lambda name: candidates[name][metric])
        for metric in ("wer", "cer")
    }
    return {
        "wer": candidates[best["wer"]]["wer"],
        "cer": candidates[best["cer"]]["cer"],
        "wer_output": best["wer"],
        "cer_output": best["cer"],
    }


def pair_accuracy(good_scores: list[float], bad_scores: list[float]) -> float:
    """Fraction of probe pairs whose good item scores higher (a tie counts half); chance is 0.5."""
    wins = pair_wins(good_scores, bad_scores)
    return sum(wins) / len(wins)


def classification_accuracy(predicted: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, with chance (one over the classes seen) and the majority-class rate as baselines."""
    if len(predicted) != len(labels) or not labels:
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    counts = Counter(labels)
    return {
        "accuracy": sum(p == y for p, y in zip(predicted, labels)) / len(labels),
        "chance": 1 / len(counts),
        "majority": counts.most_common(1)[0][1] / len(labels),
    }

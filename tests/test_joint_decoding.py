"""Joint CTC/attention decoding (slmlab.models.joint_decoding): CTC prefix scores checked against every
alignment of a small case, and the CTC head overruling the decoder in `generate`."""

import itertools
import math

import pytest
import torch
from test_speechlm import (  # noqa: F401
    inputs_for,
    make_model,
    script_the_decoder,
    tokenizer,
    waveforms,
)
from transformers import LogitsProcessorList

from slmlab.models.joint_decoding import JointCTCDecoding


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    """A CTC alignment -> its labels: repeats merged, then blanks (0) dropped."""
    return tuple(label for label, _ in itertools.groupby(path) if label != 0)


def brute_force(log_probs: torch.Tensor, length: int) -> dict[tuple[int, ...], float]:
    """Every label sequence's probability, summed over all alignments of the first `length` frames."""
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(log_probs.shape[-1]), repeat=length):
        p = log_probs[torch.arange(length), torch.tensor(path)].sum().exp().item()
        totals[collapse(path)] = totals.get(collapse(path), 0.0) + p
    return totals


def test_ctc_prefix_and_full_scores_sum_over_every_alignment():
    """Two utterances (5 frames, and 4 of 5 frames valid), 3 labels and the blank: p(exactly y) and
    p(begins with y) for y with repeats (which need a blank between) against the sum over all 4^T alignments."""
    torch.manual_seed(0)
    log_probs = torch.randn(2, 5, 4).log_softmax(-1)
    scorer = JointCTCDecoding(log_probs, torch.tensor([5, 4]), lambda ids: (), eos_token_id=0)
    for item, length in ((0, 5), (1, 4)):
        totals = brute_force(log_probs[item], length)
        for chars in [(), (1,), (2, 2), (1, 2, 1), (3, 3, 3)]:
            exactly = totals.get(chars, 0.0)
            begins = sum(p for y, p in totals.items() if y[: len(chars)] == chars)
            assert math.exp(scorer.full_score(item, chars)) == pytest.approx(exactly, abs=1e-6)
            assert math.exp(scorer.prefix_score(item, chars)) == pytest.approx(
                begins, rel=1e-5, abs=1e-7
            )
    # the same prefix of the two utterances differs: each reads its own frames
    assert scorer.prefix_score(0, (1, 2)) != scorer.prefix_score(1, (1, 2))


def spelling(frames: int, labels: list[int], vocab: int = 5) -> torch.Tensor:
    """CTC log-probs [1, frames, vocab] that spell `labels` (one frame each, then blanks), 1e-4 elsewhere."""
    probs = torch.full((frames, vocab), 1e-4)
    for t in range(frames):
        probs[t, labels[t] if t < len(labels) else 0] = 1.0
    return (probs / probs.sum(-1, keepdim=True)).log()[None]


def test_the_ctc_head_overrules_the_decoder_at_its_weight(tokenizer):  # noqa: F811
    """The scripted decoder's first choice is a (0.40) over b (0.35); the audio's CTC spells b's character.
    Decoding jointly at weight 0.5 starts with b; at weight 0.01 the decoder's a stands."""
    model = make_model(tokenizer)
    batch = inputs_for(model, tokenizer, waveforms()[:1], padding_side="left")
    batch.pop("labels")
    a, b, c, d = 10, 11, 12, 13
    script_the_decoder(model, a, b, c, d)
    characters = {a: 1, b: 2, c: 3, d: 4}  # one CTC label per token

    def chars_of(rows: list[list[int]]) -> list[tuple[int, ...]]:
        return [tuple(characters[i] for i in ids if i in characters) for ids in rows]

    common = {
        "max_new_tokens": 1,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    assert model.generate(**batch, **common)[0, 0] == a
    for weight, first in ((0.5, b), (0.01, a)):
        joint = JointCTCDecoding(
            spelling(8, [2]), torch.tensor([8]), chars_of, tokenizer.eos_id, ctc_weight=weight
        )
        new = model.generate(**batch, logits_processor=LogitsProcessorList([joint]), **common)
        assert new[0, 0] == first, weight


def test_transcribe_decodes_jointly_when_generation_sets_a_ctc_weight(
    tiny_corpus, make_cfg, monkeypatch, caplog
):
    """`generation.ctc_weight` > 0 puts the CTC head's scores into every decoding step of `transcribe`, greedy or
    beam; an arm without a CTC head is told to add one."""
    from slmlab.runs import build

    calls = []
    scoring = JointCTCDecoding.__call__
    monkeypatch.setattr(
        JointCTCDecoding,
        "__call__",
        lambda self, ids, scores: calls.append(ids.shape) or scoring(self, ids, scores),
    )
    _, task = build(make_cfg("experiment=tiny_speechlm", "model.task.generation.max_new_tokens=3"))
    wavs = waveforms()[:2]
    task.transcribe(wavs, ctc_weight=0.0)
    assert not calls
    for beams in (1, 2):
        calls.clear()
        assert len(task.transcribe(wavs, ctc_weight=0.5, num_beams=beams)) == 2
        assert [rows for rows, _ in calls][:1] == [2 * beams] and len(calls) >= 1
    with caplog.at_level(
        "WARNING", logger="slmlab.tasks.speechlm"
    ):  # the default decoding, without a head
        _, plain = build(make_cfg("experiment=tiny_speechlm", "model.task.net.ctc_weight=0"))
    assert any("decodes with its decoder alone" in m for m in caplog.messages)
    calls.clear()
    assert len(plain.transcribe(wavs)) == 2 and not calls
    with pytest.raises(ValueError, match="model.task.net.ctc_weight > 0"):  # asked for explicitly
        plain.transcribe(wavs, ctc_weight=0.5)

"""Every metric an arm supports, on the corpus's held-out test split and probes (`slmlab-eval`, and the end
of `slmlab-train` with `evaluate=true`); on the val split instead to choose decoding settings (`split`).

An arm takes part in a metric by declaring the capability behind it (`slmlab.tasks.protocol`: the
methods, their signatures and the metrics each one gives); a metric it cannot produce stays None (the
report prints n/a), never zero. Waveforms go in and come out at the task's `sample_rate`; the judges
hear them at 16 kHz.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchaudio.functional as AF

from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import (
    RecordPolicy,
    audio_path,
    load_audio,
    read_labels,
    read_records,
    read_split,
)
from slmlab.eval.intervals import metric_value
from slmlab.eval.metrics import (
    classification_accuracy,
    error_rates,
    item_errors,
    pair_wins,
    trivial_error_rates,
)
from slmlab.tasks.protocol import can, check_arm
from slmlab.tokenizers.mel import MelVocoder

log = logging.getLogger(__name__)

SPLITS = (
    "test",
    "val",
)  # what an evaluation scores: the held-out test items, or val to tune decoding

# metric -> (what it is, which way is better); the report's columns, in order
METRICS = {
    "asr_wer": ("speech -> text WER on test audio", "lower"),
    "asr_cer": ("speech -> text CER on test audio", "lower"),
    "tts_wer": ("text -> speech: the judge's WER on the generated audio", "lower"),
    "tts_cer": ("text -> speech: the judge's CER on the generated audio", "lower"),
    **{
        f"{metric}_fewshot": (
            f"{metric}, the prompt led by train examples (Spirit LM's few-shot protocol)",
            "lower",
        )
        for metric in ("asr_wer", "asr_cer", "tts_wer", "tts_cer")
    },
    "resynthesis_wer": (
        "the judge's WER on test audio through the arm's speech tokens and decoder",
        "lower",
    ),
    "resynthesis_ceiling_wer": (
        "the judge's WER on Griffin-Lim of the real test mel at the arm's decoder settings "
        "(what resynthesis_wer would be with lossless speech tokens)",
        "lower",
    ),
    "true_codebook0_wer": (
        "the judge's WER on test audio whose codebook 0 is its own and whose other codebooks the arm's "
        "decoder samples, conditioned on the true text and frames (CSM's TTS with a backbone that never errs)",
        "lower",
    ),
    "text_ppl": ("test text perplexity per BPE token", "lower"),
    "speech_nats_per_second": (
        "test speech negative log-likelihood, nats per second of audio",
        "lower",
    ),
    "lexical_text": (
        "word vs. non-word accuracy from total text log-likelihoods (chance 0.5)",
        "higher",
    ),
    "syntactic_text": (
        "grammatical vs. ungrammatical accuracy from total text log-likelihoods (chance 0.5)",
        "higher",
    ),
    "lexical_speech": (
        "word vs. non-word accuracy from total speech log-likelihoods (chance 0.5)",
        "higher",
    ),
    "syntactic_speech": (
        "grammatical vs. ungrammatical accuracy from total speech log-likelihoods (chance 0.5)",
        "higher",
    ),
    **{
        f"{probe}_per_token": ("the same, from log-likelihoods per token (chance 0.5)", "higher")
        for probe in ("lexical_text", "syntactic_text", "lexical_speech", "syntactic_speech")
    },
    "style_accuracy": ("style of a speech continuation = style of its prompt", "higher"),
    "resynthesis_style_accuracy": (
        "style of the prompts through the arm's speech tokens and decoder (the ceiling)",
        "higher",
    ),
    "generation_rtf": ("seconds of compute per second of generated speech", "lower"),
}
# metrics scored on outputs the arm generates (the same outputs give asr_cer and tts_cer): their empty or
# failed outputs are counted (Evaluation.empty, the report's `<metric>_empty` columns)
GENERATED = (
    "asr_wer",
    "tts_wer",
    "asr_wer_fewshot",
    "tts_wer_fewshot",
    "resynthesis_wer",
    "true_codebook0_wer",
    "style_accuracy",
    "resynthesis_style_accuracy",
)


@dataclass
class Evaluation:
    """metrics: METRICS' names -> value or None; baselines: what each metric must beat (trivial outputs,
    chance) and the judges' own figures on real audio; samples: TTS examples for TensorBoard; empty: per
    metric scored on generated outputs, how many of them were empty or failed (scored as wrong); items: per
    metric, and for the judge on real audio (`judge_wer`, `judge_cer`), each item's id and (num, den), whose
    sums' ratio is the metric (slmlab.eval.intervals)."""

    metrics: dict[str, float | None]
    baselines: dict[str, float | str]
    samples: list[dict] = field(default_factory=list)
    empty: dict[str, int] = field(default_factory=dict)
    items: dict[str, dict] = field(default_factory=dict)


def _load(record, sample_rate: int) -> torch.Tensor:
    return load_audio(
        audio_path(record) if sample_rate > SAMPLE_RATE else record.audio_filepath, sample_rate
    )


def _to_judge(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """An arm's output waveform -> float32 at the judges' 16 kHz."""
    wave = wave.float()
    return (
        AF.resample(wave, sample_rate, SAMPLE_RATE)
        if sample_rate != SAMPLE_RATE and len(wave)
        else wave
    )


def _mel_vocoder(task) -> MelVocoder | None:
    """The mel -> waveform stage of an arm's speech decoder (the built-in codec's, Spirit LM's unit
    vocoder), at its mel settings; None when its decoder has none (Mimi) or it does not speak."""
    for decoder in (
        getattr(getattr(task, "codec", None), "vocoder", None),
        getattr(getattr(task, "speech_tokenizer", None), "decoder", None),
    ):
        if isinstance(decoder, MelVocoder):
            return decoder
    return None


def _probe_pairs(corpus, name: str, limit: int | None) -> list[tuple[object, object]]:
    """(good, bad) manifest records of a probe, in file order; none when the corpus has no such probe."""
    rows_path = Path(corpus.root) / "probes" / f"{name}.jsonl"
    if not rows_path.is_file():
        return []
    records, _ = read_records(
        Path(corpus.root) / "probes" / f"{name}_audio.jsonl", RecordPolicy.of(corpus)
    )
    by_id = {r.id: r for r in records}
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f if line.strip()][:limit]
    pairs = [
        (by_id[r["good"]], by_id[r["bad"]]) for r in rows if {r["good"], r["bad"]} <= set(by_id)
    ]
    if len(pairs) < len(rows):
        log.warning(
            "probe %s: %d of %d pairs left out (a recording was skipped by validation)",
            name,
            len(rows) - len(pairs),
            len(rows),
        )
    return pairs


class Evaluator:
    """corpus: the one the arm trained on; judge: `transcribe(16 kHz waveforms)`; style_classifier:
    `predict(16 kHz waveforms)`, or None when the corpus has no style labels (no style metrics then).
    split: the utterances scored, "test", or "val" to choose decoding settings without reading the test items.
    utterances: test utterances for ASR, TTS and likelihoods; style_prompts: prompts of the style probe;
    probe_pairs: pairs per probe (None: all; a corpus without `probes/` has no probe metrics).
    few_shot: {"shots", "seed"}: an arm whose `transcribe` / `synthesise` take `examples` (Spirit LM) is also
    prompted with `shots` train (speech, text) pairs before each query (`*_fewshot` metrics), drawn per query
    from the train split, seeded by `seed` and the query's id; 0 shots: none. Without the train audio (a
    run evaluated away from its corpus) those metrics are n/a, with a warning."""

    def __init__(
        self,
        corpus,
        judge,
        style_classifier,
        utterances: int = 48,
        style_prompts: int = 32,
        probe_pairs: int | None = None,
        continuation_seconds: float = 2.0,
        max_seconds: float = 8.0,
        tensorboard_samples: int = 2,
        few_shot: dict | None = None,
        split: str = "test",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"eval.split must be one of {SPLITS}; got {split!r}")
        self.corpus, self.judge, self.style_classifier = corpus, judge, style_classifier
        self.few_shot = {"shots": 3, "seed": 0} | (few_shot or {})
        self.utterances, self.style_prompts, self.probe_pairs = (
            utterances,
            style_prompts,
            probe_pairs,
        )
        self.continuation_seconds, self.max_seconds, self.tensorboard_samples = (
            continuation_seconds,
            max_seconds,
            tensorboard_samples,
        )
        self.split = split
        self.test, _ = read_split(
            corpus, split
        )  # the scored utterances (the test split unless `split`)
        # the trivial baselines need only the transcripts; few-shot prompts, a few recordings
        self.train = read_labels(corpus, "train")
        self.train_texts = [r.text for r in self.train]

    def baselines(self) -> dict[str, float | str]:
        """Trivial outputs, chance, and the judges on the same real test items the arms are scored on (the
        judge's own items too, as `judge_wer` and `judge_cer`: the report checks that it hears)."""
        test = self.test[: self.utterances]
        trivial = trivial_error_rates([r.text for r in test], self.train_texts)
        heard = self.judge.transcribe([load_audio(r.audio_filepath, SAMPLE_RATE) for r in test])
        judged = error_rates(heard, [r.text for r in test])
        for name, (edits, lengths) in item_errors(heard, [r.text for r in test]).items():
            self.items[f"judge_{name}"] = {
                "ids": [r.id for r in test],
                "num": edits,
                "den": lengths,
            }
        baselines = {
            "trivial_wer": trivial["wer"],
            "trivial_cer": trivial["cer"],
            "trivial_wer_output": trivial["wer_output"],
            "trivial_cer_output": trivial["cer_output"],
            "probe_chance": 0.5,
            "judge_wer": judged["wer"],
            "judge_cer": judged["cer"],
            "judge_utterances": len(test),
        }
        styles = [r.style for r in self.test[: self.style_prompts] if r.style]
        if self.style_classifier is not None and styles:
            rates = classification_accuracy(styles, styles)
            baselines.update(
                {
                    "style_chance": rates["chance"],
                    "style_majority": rates["majority"],
                    "style_classifier_accuracy": self.style_classifier.report.get("accuracy"),
                }
            )
        return baselines

    @torch.no_grad()
    def __call__(self, task) -> Evaluation:
        check_arm(task)
        rate = getattr(task, "sample_rate", SAMPLE_RATE)  # a text-only arm takes no audio
        test = self.test[: self.utterances]
        texts, speakers = [r.text for r in test], [r.speaker for r in test]
        self.metrics: dict[str, float | None] = dict.fromkeys(METRICS)
        self.items: dict[str, dict] = {}
        self.empty: dict[str, int] = {}
        samples: list[dict] = []
        started = time.perf_counter()
        needs_audio = any(
            can(task, c)
            for c in ("transcribe", "score_speech", "resynthesise", "decode_true_codebook0")
        )
        waves = [_load(r, rate) for r in test] if needs_audio else []
        if can(task, "transcribe"):
            hypotheses = [
                h for i in range(0, len(waves), 16) for h in task.transcribe(waves[i : i + 16])
            ]
            self._score_transcripts("asr", test, hypotheses)
            self._count_empty("asr_wer", test, [not h.strip() for h in hypotheses])
            samples += [
                {"kind": "asr", "text": t, "hypothesis": h} for t, h in zip(texts, hypotheses)
            ][: self.tensorboard_samples]
        if can(task, "synthesise"):
            outputs, seconds = self._generate(
                "tts_wer",
                test,
                lambda i, r: _to_judge(
                    task.synthesise(r.text, r.speaker, max_seconds=self.max_seconds), rate
                ),
            )
            self._score_speech_outputs("tts", test, outputs)
            self._record("generation_rtf", test, seconds, [len(w) / SAMPLE_RATE for w in outputs])
            samples += [
                {
                    "kind": "tts",
                    "text": t,
                    "generated": _nonempty(g),
                    "reference": load_audio(r.audio_filepath, SAMPLE_RATE),
                }
                for t, g, r in zip(texts, outputs, test)
            ][: self.tensorboard_samples]
        self._score_few_shot(task, test, waves, rate)
        if can(task, "resynthesise"):
            resynthesised, _ = self._generate(
                "resynthesis_wer", test, lambda i, r: _to_judge(task.resynthesise(waves[i]), rate)
            )
            self._score_speech_outputs("resynthesis", test, resynthesised)
            vocoder = _mel_vocoder(task)
            if vocoder is not None:
                ceiling = [_to_judge(vocoder.mel_to_wave(vocoder.log_mel(w)), rate) for w in waves]
                self._score_speech_outputs("resynthesis_ceiling", test, ceiling)
        if can(task, "decode_true_codebook0"):
            with torch.random.fork_rng():  # the metrics after it draw as they would without it
                completed, _ = self._generate(
                    "true_codebook0_wer",
                    test,
                    lambda i, r: _to_judge(
                        task.decode_true_codebook0(waves[i], r.text, r.speaker), rate
                    ),
                )
            self._score_speech_outputs("true_codebook0", test, completed)
        if can(task, "score_texts"):
            scores = task.score_texts(texts)
            self._record("text_ppl", test, [-s for s, _ in scores], [n for _, n in scores])
            for probe in ("lexical", "syntactic"):
                pairs = _probe_pairs(self.corpus, probe, self.probe_pairs)
                if pairs:
                    good = task.score_texts([g.text for g, _ in pairs])
                    bad = task.score_texts([b.text for _, b in pairs])
                    self._score_probe(f"{probe}_text", pairs, good, bad)
        if can(task, "score_speech"):
            scores = task.score_speech(waves, speakers)
            self._record(
                "speech_nats_per_second",
                test,
                [-s for s, _ in scores],
                [len(w) / rate for w in waves],
            )
            for probe in ("lexical", "syntactic"):
                pairs = _probe_pairs(self.corpus, probe, self.probe_pairs)
                if pairs:
                    good = task.score_speech(
                        [_load(g, rate) for g, _ in pairs], [g.speaker for g, _ in pairs]
                    )
                    bad = task.score_speech(
                        [_load(b, rate) for _, b in pairs], [b.speaker for _, b in pairs]
                    )
                    self._score_probe(f"{probe}_speech", pairs, good, bad)
        if can(task, "continue_speech") and self.style_classifier is not None:
            prompts = [r for r in self.test if r.style][: self.style_prompts]
            continuations, _ = self._generate(
                "style_accuracy",
                prompts,
                lambda i, r: _to_judge(
                    task.continue_speech(
                        _load(r, rate),
                        seconds=self.continuation_seconds,
                        prompt_text=r.text,
                        speaker=r.speaker,
                        next_text=prompts[(i + 1) % len(prompts)].text,
                    ),
                    rate,
                ),
            )
            self._score_styles("style_accuracy", prompts, continuations)
            if can(task, "resynthesise"):
                resynthesised, _ = self._generate(
                    "resynthesis_style_accuracy",
                    prompts,
                    lambda i, r: _to_judge(task.resynthesise(_load(r, rate)), rate),
                )
                self._score_styles("resynthesis_style_accuracy", prompts, resynthesised)
        log.info(
            "evaluated in %.0f s: %s",
            time.perf_counter() - started,
            json.dumps({k: v for k, v in self.metrics.items() if v is not None}),
        )
        return Evaluation(self.metrics, self.baselines(), samples, self.empty, self.items)

    def _score_few_shot(self, task, test: list, waves: list, rate: int) -> None:
        """`asr_*_fewshot` and `tts_*_fewshot`: ASR and TTS again, each query led by its train examples
        (waves: the test records' audio at `rate`)."""
        takes = [
            capability
            for capability in ("transcribe", "synthesise")
            if can(task, capability)
            and "examples" in inspect.signature(getattr(task, capability)).parameters
        ]
        examples = self._few_shot_examples(test, rate) if takes else None
        if not examples:
            return
        if "transcribe" in takes:
            hypotheses = [
                h
                for i in range(0, len(waves), 16)
                for h in task.transcribe(waves[i : i + 16], examples=examples[i : i + 16])
            ]
            self._score_transcripts("asr", test, hypotheses, suffix="_fewshot")
            self._count_empty("asr_wer_fewshot", test, [not h.strip() for h in hypotheses])
        if "synthesise" in takes:
            outputs, _ = self._generate(
                "tts_wer_fewshot",
                test,
                lambda i, r: _to_judge(
                    task.synthesise(
                        r.text, r.speaker, max_seconds=self.max_seconds, examples=examples[i]
                    ),
                    rate,
                ),
            )
            self._score_speech_outputs("tts", test, outputs, suffix="_fewshot")

    def _few_shot_examples(self, test: list, rate: int) -> list[list[tuple]] | None:
        """Per test record, `shots` (waveform at `rate`, text) pairs of the train split, drawn for that
        record (seeded by the seed and its id, so a rerun prompts alike); None when shots is 0 or the train
        audio they need is not there."""
        shots, seed = self.few_shot["shots"], self.few_shot["seed"]
        if not shots:
            return None
        if shots > len(self.train):
            raise ValueError(
                f"eval.few_shot.shots={shots}, but {self.corpus.manifest('train')} has "
                f"{len(self.train)} usable records"
            )
        draws = [random.Random(f"{seed}:{r.id}").sample(self.train, shots) for r in test]
        chosen = {e.id: e for draw in draws for e in draw}
        missing = [
            e.audio_filepath for e in chosen.values() if not Path(e.audio_filepath).is_file()
        ]
        if missing:
            log.warning(
                "few-shot metrics n/a: %d of the %d train recordings their prompts need are missing, "
                "e.g. %s (is the run evaluated away from its corpus's train audio?)",
                len(missing),
                len(chosen),
                missing[0],
            )
            return None
        audio = {i: _load(e, rate) for i, e in chosen.items()}
        return [[(audio[e.id], e.text) for e in draw] for draw in draws]

    def _record(self, name: str, records: list, num: list[float], den: list[float]) -> None:
        """The metric `name` from its items: each record's (num, den), kept for the intervals."""
        self.items[name] = {
            "ids": [r.id for r in records],
            "num": [float(x) for x in num],
            "den": [float(x) for x in den],
        }
        self.metrics[name] = metric_value(name, num, den)

    def _score_transcripts(
        self, prefix: str, records: list, hypotheses: list[str], suffix: str = ""
    ) -> None:
        """`<prefix>_wer<suffix>` and `<prefix>_cer<suffix>` of hypotheses against the records' texts."""
        counts = item_errors(hypotheses, [r.text for r in records])
        for name, (edits, lengths) in counts.items():
            if f"{prefix}_{name}{suffix}" in METRICS:
                self._record(f"{prefix}_{name}{suffix}", records, edits, lengths)

    def _score_speech_outputs(
        self, prefix: str, records: list, outputs: list, suffix: str = ""
    ) -> None:
        """The judge's WER (and CER) on the arm's speech outputs; an empty one is heard as silence."""
        heard = self.judge.transcribe([_nonempty(w) for w in outputs])
        self._score_transcripts(prefix, records, heard, suffix)

    def _score_styles(self, name: str, prompts: list, outputs: list) -> None:
        """Whether the style classifier hears each output in its prompt's style."""
        predicted = self.style_classifier.predict([_nonempty(w) for w in outputs])
        correct = [float(p == r.style) for p, r in zip(predicted, prompts)]
        self._record(name, prompts, correct, [1.0] * len(prompts))

    def _score_probe(self, name: str, pairs: list, good: list, bad: list) -> None:
        """`name` from each pair's total log-likelihoods (the BLiMP / ZeroSpeech convention), and
        `<name>_per_token` from their means per token (which a length difference cannot decide alike)."""
        ids = [g for g, _ in pairs]
        for metric, score in ((name, _total), (f"{name}_per_token", _per_token)):
            wins = pair_wins([score(x) for x in good], [score(x) for x in bad])
            self._record(metric, ids, wins, [1.0] * len(wins))

    def _generate(
        self, metric: str, records: list, generate
    ) -> tuple[list[torch.Tensor], list[float]]:
        """`generate(i, record)` -> the arm's 16 kHz waveform for each record, and the seconds each took.
        A failed generation is
        logged once with the record's id and its error, and becomes an empty output; empty outputs are
        counted in `self.empty[metric]` and later scored as silence (wrong), never dropped. When every
        generation fails, the last error is raised (a broken arm, not a bad item)."""
        outputs, seconds, failed = [], [], 0
        for i, record in enumerate(records):
            started = time.perf_counter()
            try:
                outputs.append(generate(i, record))
            except Exception as error:  # one bad item must not lose the whole evaluation
                if failed == i == len(records) - 1:
                    raise  # every generation failed: a broken arm, not a bad item
                log.warning("%s: generation failed for id=%s: %r", metric, record.id, error)
                failed += 1
                outputs.append(None)
            seconds.append(time.perf_counter() - started)
        short = [w is not None and len(w) < 0.1 * SAMPLE_RATE for w in outputs]
        self._count_empty(metric, records, short)
        self.empty[metric] += failed
        return [torch.zeros(0) if w is None else w for w in outputs], seconds

    def _count_empty(self, metric: str, records: list, empty: list[bool]) -> None:
        """Count the empty outputs of `metric` in `self.empty`, each logged once with its record's id."""
        for record, is_empty in zip(records, empty):
            if is_empty:
                log.warning("%s: empty output for id=%s (scored as wrong)", metric, record.id)
        self.empty[metric] = sum(empty)


def _total(score: tuple[float, int]) -> float:
    """An item's log-likelihood in total: the convention of BLiMP and ZeroSpeech's sWUGGY / sBLIMP."""
    return score[0]


def _per_token(score: tuple[float, int]) -> float:
    """An item's mean log-likelihood per token (with BPE, a non-word split into more pieces gets
    predictable later pieces)."""
    return score[0] / max(score[1], 1)


def _nonempty(wave: torch.Tensor, seconds: float = 0.1) -> torch.Tensor:
    """An empty output becomes `seconds` of silence, so that it is scored (as wrong), not dropped."""
    return wave if len(wave) >= seconds * SAMPLE_RATE else torch.zeros(int(seconds * SAMPLE_RATE))

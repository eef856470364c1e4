"""The study's metrics on hand-made cases, the judges, the evaluator's n/a rule and the report writer."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from slmlab.eval.metrics import (
    classification_accuracy,
    error_rates,
    normalise_text,
    pair_accuracy,
    trivial_error_rates,
)
from slmlab.runs import REPO_ROOT


def test_error_rates_of_known_strings():
    assert error_rates(["the cat sat"], ["the cat sat"]) == {"wer": 0.0, "cer": 0.0}
    # one substitution in four words; one deletion in four
    assert error_rates(["the dog sat down"], ["the cat sat down"])["wer"] == pytest.approx(0.25)
    assert error_rates(["the cat sat"], ["the cat sat down"])["wer"] == pytest.approx(0.25)
    # corpus-level: edits summed over utterances, divided by all reference words (2 + 0) / (2 + 3)
    assert error_rates(["", "a b c"], ["x y", "a b c"])["wer"] == pytest.approx(0.4)
    # case and punctuation do not count
    assert error_rates(["The Cat, sat!"], ["the cat sat"])["wer"] == 0.0
    assert normalise_text("  Don't  STOP. ") == "don't stop"
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        error_rates(["a", "b"], ["a"])


def test_the_trivial_output_is_the_best_of_empty_a_constant_and_a_random_sentence():
    references = ["the cat", "the dog", "a bird"]
    trivial = trivial_error_rates(references, ["the cat", "the cow", "the end"])
    assert trivial["wer_output"] == "constant 'the'"
    # "the" against each reference: 1 + 1 + 2 edits over 6 words
    assert trivial["wer"] == pytest.approx(4 / 6)
    assert trivial_error_rates(["x y"], ["the"])["wer"] == 1.0  # never worse than the empty output
    # when the training sentences are the test sentences, a random one is right now and then
    same = trivial_error_rates(["a b", "a b"], ["a b"])
    assert same["wer"] == 0.0 and same["wer_output"] == "a random training sentence"


def test_probe_accuracy_of_a_model_that_always_prefers_the_first_item():
    first, second = [1.0] * 10, [0.0] * 10
    assert pair_accuracy(first, second) == 1.0  # the good item is always first: perfect
    assert pair_accuracy(second, first) == 0.0  # always second: never right
    assert pair_accuracy([0.0] * 4, [0.0] * 4) == 0.5  # ties are chance
    assert pair_accuracy([2.0, 0.0], [1.0, 1.0]) == 0.5


def test_style_accuracy_of_a_perfect_and_of_a_constant_classifier():
    labels = ["sad", "sad", "excited", "neutral"]
    perfect = classification_accuracy(labels, labels)
    constant = classification_accuracy(["sad"] * 4, labels)
    assert perfect == {"accuracy": 1.0, "chance": pytest.approx(1 / 3), "majority": 0.5}
    assert (
        constant["accuracy"] == 0.5 == constant["majority"]
    )  # a constant classifier reaches the majority rate


def test_the_judge_reports_its_own_error_on_the_real_test_audio_and_reloads(tiny_corpus):
    """The judge's quality is measured, not assumed: `floor.json` is its WER and CER on every real test
    utterance, recomputed here from the reloaded judge's transcripts. (A judge that hears well takes
    minutes to fit; the default corpus's floor, 0.116, is in the study's report.)"""
    from slmlab.data.manifest import load_audio, read_manifest
    from slmlab.eval.judge import CTCJudge, load_or_fit_judge

    model = {"dim": 32, "layers": 1, "heads": 2, "ffn_dim": 64, "kernel_size": 7}
    judge = load_or_fit_judge(tiny_corpus, model=model, epochs=4)
    folder = next((Path(tiny_corpus.root) / "artifacts" / "judge").glob("ctc-*/judge.pt")).parent
    floor = json.loads((folder / "floor.json").read_text())
    test, _ = read_manifest(tiny_corpus.manifest("test"))
    waves = [load_audio(r.audio_filepath, 16000) for r in test]
    reloaded = CTCJudge.load(folder)
    measured = error_rates(reloaded.transcribe(waves), [r.text for r in test])
    assert floor["utterances"] == len(test) == 24
    assert (floor["wer"], floor["cer"]) == pytest.approx((measured["wer"], measured["cer"]))
    again = load_or_fit_judge(tiny_corpus, model=model, epochs=4)  # from the cache, not refitted
    assert again.floor == judge.floor
    assert again.transcribe(waves[:3]) == judge.transcribe(waves[:3])


def test_a_local_transformers_recogniser_replaces_the_judge(tmp_path):
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    from slmlab.eval.judge import load_or_fit_judge

    vocab = {"<pad>": 0, "|": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), word_delimiter_token="|")
    processor = Wav2Vec2Processor(Wav2Vec2FeatureExtractor(sampling_rate=16000), tokenizer)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "asr")
    processor.save_pretrained(tmp_path / "asr")
    judge = load_or_fit_judge(corpus=None, pretrained_path=str(tmp_path / "asr"))
    texts = judge.transcribe([torch.randn(16000), torch.randn(8000)])
    assert len(texts) == 2 and all(isinstance(t, str) and t == normalise_text(t) for t in texts)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_or_fit_judge(corpus=None, pretrained_path="facebook/wav2vec2-base-960h")


def test_the_style_classifier_separates_styles_and_reports_its_ceiling(tiny_corpus):
    from slmlab.eval.style import load_or_fit_style_classifier

    classifier = load_or_fit_style_classifier(tiny_corpus, crop_seconds=2.0)
    report = classifier.report
    assert report["test_clips"] == 24 and report["chance"] == pytest.approx(1 / 4)
    assert report["accuracy"] > report["majority"]  # prosody tells the eSpeak styles apart


class _TextOnlyArm:
    """An arm with only text likelihoods, preferring shorter texts: no speech metric may appear."""

    sample_rate = 16000
    capabilities = frozenset({"score_texts"})
    speaks = False

    def eval(self):
        return self

    def score_texts(self, texts):
        return [(-float(len(t)), max(1, len(t.split()))) for t in texts]


def _key(wave: torch.Tensor) -> tuple[int, float]:
    return len(wave), round(float(wave.abs().sum()), 3)


def _test_audio(corpus) -> dict[tuple[int, float], tuple[str, torch.Tensor]]:
    """The tiny test split's 16 kHz waveforms, keyed by their content (each is unique there)."""
    from slmlab.data.manifest import load_audio, read_manifest

    test, _ = read_manifest(corpus.manifest("test"), check_audio=False)
    waves = [(r.text, load_audio(r.audio_filepath, 16000)) for r in test]
    by_key = {_key(w): (t, w) for t, w in waves}
    assert len(by_key) == len(waves)
    return by_key


class _EchoArm(_TextOnlyArm):
    """Hears perfectly (returns the reference) and speaks by replaying the reference audio."""

    capabilities = frozenset({"score_texts", "transcribe", "synthesise"})
    speaks = True

    def __init__(self, corpus):
        self.by_key = _test_audio(corpus)
        self.audio_of = {t: w for t, w in self.by_key.values()}

    def transcribe(self, waveforms):
        return [self.by_key[_key(w)][0] for w in waveforms]

    def synthesise(self, text, speaker=None, max_seconds=8.0):
        return self.audio_of[text]


class _Judge:
    """Transcribes the test split's own audio perfectly, anything else as nothing."""

    floor = {"wer": 0.0, "cer": 0.0}

    def __init__(self, corpus):
        self.by_key = _test_audio(corpus)

    def transcribe(self, waveforms):
        return [self.by_key.get(_key(w), ("",))[0] for w in waveforms]


class _Styles:
    report = {"accuracy": 1.0}

    def predict(self, waveforms):
        return ["neutral"] * len(waveforms)


def test_the_evaluator_reports_what_an_arm_supports_and_nothing_else(tiny_corpus):
    from slmlab.eval.evaluate import METRICS, Evaluator

    evaluator = Evaluator(
        tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6, style_prompts=4, probe_pairs=5
    )
    text_only = evaluator(_TextOnlyArm())
    assert set(text_only.metrics) == set(METRICS)
    assert {k for k, v in text_only.metrics.items() if v is not None} == {
        "text_ppl",
        "lexical_text",
        "syntactic_text",
        "lexical_text_per_token",
        "syntactic_text_per_token",
    }
    assert (
        text_only.baselines["probe_chance"] == 0.5 and 0 < text_only.baselines["trivial_wer"] <= 1
    )

    # every metric comes with its items, whose sums give the metric (the report's intervals)
    from slmlab.eval.intervals import metric_value

    for name, value in text_only.metrics.items():
        if value is not None:
            items = text_only.items[name]
            assert metric_value(name, items["num"], items["den"]) == pytest.approx(value)
    assert len(text_only.items["lexical_text"]["ids"]) == 5  # probe_pairs
    for name in (
        "judge_wer",
        "judge_cer",
    ):  # the judge's own items on the real audio, for its interval
        items = text_only.items[name]
        assert metric_value(name, items["num"], items["den"]) == pytest.approx(
            text_only.baselines[name]
        )
    echo = evaluator(_EchoArm(tiny_corpus)).metrics
    assert echo["asr_wer"] == 0.0 and echo["asr_cer"] == 0.0
    assert echo["tts_wer"] == 0.0  # the judge hears the replayed reference
    assert echo["style_accuracy"] is None and echo["speech_nats_per_second"] is None


class _ListeningArm(_TextOnlyArm):
    """Writes down every text it is asked to speak and every waveform length it is asked to hear."""

    capabilities = frozenset({"transcribe", "synthesise"})
    speaks = True

    def __init__(self):
        self.spoken, self.heard = [], []

    def transcribe(self, waveforms):
        self.heard += [len(w) for w in waveforms]
        return ["a"] * len(waveforms)

    def synthesise(self, text, speaker=None, max_seconds=8.0):
        self.spoken.append(text)
        return torch.zeros(1600)


def test_decoding_is_chosen_on_the_val_split_without_reading_a_test_utterance(tiny_corpus):
    from slmlab.data.manifest import load_audio, read_split
    from slmlab.eval.evaluate import Evaluator

    val, _ = read_split(tiny_corpus, "val")
    test, _ = read_split(tiny_corpus, "test")
    arm = _ListeningArm()
    evaluation = Evaluator(
        tiny_corpus, _Judge(tiny_corpus), None, utterances=3, probe_pairs=2, split="val"
    )(arm)
    assert arm.spoken == [r.text for r in val[:3]]
    assert arm.heard == [len(load_audio(r.audio_filepath, 16000)) for r in val[:3]]
    for name in ("asr_wer", "tts_wer", "judge_wer"):
        assert evaluation.items[name]["ids"] == [r.id for r in val[:3]]
    assert not {r.id for r in test} & {r.id for r in val}
    with pytest.raises(ValueError, match="'train'.*test.*val|test.*val.*'train'"):
        Evaluator(tiny_corpus, _Judge(tiny_corpus), None, split="train")


class _RandomArm(_TextOnlyArm):
    """Speaks noise of random lengths, drawn from torch's global generator."""

    capabilities = frozenset({"synthesise", "continue_speech"})
    speaks = True

    def synthesise(self, text, speaker=None, max_seconds=8.0):
        return torch.randn(int(torch.randint(1600, 16000, ())))

    def continue_speech(self, prompt, seconds, prompt_text, speaker, next_text):
        return torch.randn(int(torch.randint(1600, 16000, ())))

    def decode_true_codebook0(self, waveform, text, speaker=None):
        return torch.randn(int(torch.randint(1600, 16000, ())))


class _StylesOfLengths(_Styles):
    """Keeps the length of every waveform it is given."""

    def __init__(self):
        self.lengths = []

    def predict(self, waveforms):
        self.lengths += [len(w) for w in waveforms]
        return super().predict(waveforms)


def test_the_true_codebook0_metric_leaves_the_metrics_after_it_as_they_were(tiny_corpus):
    """A diagnostic metric must not move the figures beside it: its draws do not advance the global
    generator that later generations (the style continuations) draw from."""
    from slmlab.eval.evaluate import Evaluator

    heard = {}
    for declared in (frozenset(), frozenset({"decode_true_codebook0"})):
        arm, styles = _RandomArm(), _StylesOfLengths()
        arm.capabilities = _RandomArm.capabilities | declared
        torch.manual_seed(0)
        metrics = Evaluator(
            tiny_corpus, _Judge(tiny_corpus), styles, utterances=6, style_prompts=4
        )(arm).metrics
        heard[bool(declared)] = styles.lengths
        assert (metrics["true_codebook0_wer"] is not None) == bool(declared)
    assert len(heard[True]) == 4 and heard[True] == heard[False]


def test_the_real_time_factor_is_compute_seconds_over_generated_seconds(tiny_corpus, monkeypatch):
    """With a clock that advances 0.5 s per reading, each synthesis takes 0.5 s: the RTF is 0.5 s times
    the items over the seconds of audio they produced."""
    import itertools

    from slmlab.eval import evaluate

    evaluator = evaluate.Evaluator(tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6)
    arm = _EchoArm(tiny_corpus)
    produced = sum(len(arm.audio_of[r.text]) for r in evaluator.test[:6]) / 16000
    clock = itertools.count(step=0.5)
    monkeypatch.setattr(evaluate.time, "perf_counter", lambda: next(clock))
    rtf = evaluator(arm).metrics["generation_rtf"]
    assert rtf == pytest.approx(6 * 0.5 / produced)


class _FlakyArm(_EchoArm):
    """Like _EchoArm, but its first test sentence comes out empty and its second raises."""

    def synthesise(self, text, speaker=None, max_seconds=8.0):
        first, second = list(self.audio_of)[:2]
        if text == second:
            raise RuntimeError("no end frame")
        return torch.zeros(0) if text == first else self.audio_of[text]


def test_empty_and_failed_generations_are_counted_scored_wrong_and_logged_once(tiny_corpus, caplog):
    from slmlab.eval.evaluate import Evaluator

    evaluator = Evaluator(tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6)
    arm = _FlakyArm(tiny_corpus)
    with caplog.at_level("WARNING", logger="slmlab.eval.evaluate"):
        evaluation = evaluator(arm)
    assert evaluation.empty == {"asr_wer": 0, "tts_wer": 2}
    assert 0 < evaluation.metrics["tts_wer"] < 1  # the two are scored as wrong, not dropped
    ids = [r.id for r in evaluator.test[:2]]
    warnings = [m for m in caplog.messages if "tts_wer" in m]
    assert len(warnings) == 2 and all(any(f"id={i}" in m for m in warnings) for i in ids)


class _FewShotEchoArm(_EchoArm):
    """_EchoArm that also takes few-shot examples, as Spirit LM does, and records them per query."""

    def __init__(self, corpus):
        super().__init__(corpus)
        self.examples = {"asr": [], "tts": []}

    def transcribe(self, waveforms, examples=None):
        self.examples["asr"] += examples or []
        return super().transcribe(waveforms)

    def synthesise(self, text, speaker=None, max_seconds=8.0, examples=None):
        self.examples["tts"] += [examples] if examples else []
        return super().synthesise(text, speaker, max_seconds)


def test_few_shot_prompts_take_train_examples_for_the_arms_that_take_examples_only(tiny_corpus):
    """Each query's examples are `shots` train recordings with their texts (never a test sentence), drawn
    per query and again alike on a rerun; an arm without `examples` gets no few-shot metric, nor do 0 shots."""
    from slmlab.data.manifest import load_audio, read_manifest
    from slmlab.eval.evaluate import Evaluator

    fewshot = ["asr_wer_fewshot", "asr_cer_fewshot", "tts_wer_fewshot", "tts_cer_fewshot"]
    evaluator = Evaluator(
        tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6, few_shot={"shots": 2, "seed": 0}
    )
    arm = _FewShotEchoArm(tiny_corpus)
    evaluation = evaluator(arm)
    assert [evaluation.metrics[name] for name in fewshot] == [0.0] * 4  # it echoes: all right
    assert evaluation.empty["asr_wer_fewshot"] == evaluation.empty["tts_wer_fewshot"] == 0
    train, _ = read_manifest(tiny_corpus.manifest("train"), check_audio=False)
    train_audio = {r.text: r.audio_filepath for r in train}
    test_texts = {r.text for r in evaluator.test}
    drawn = {kind: [[t for _, t in query] for query in arm.examples[kind]] for kind in arm.examples}
    assert len(drawn["asr"]) == 6 and drawn["asr"] == drawn["tts"]
    assert all(len(query) == 2 for query in drawn["asr"])
    for wave, text in (pair for query in arm.examples["asr"] for pair in query):
        assert text in train_audio and text not in test_texts
        assert torch.equal(wave, load_audio(train_audio[text], 16000))
    assert len({tuple(query) for query in drawn["asr"]}) > 1  # drawn per query
    again = _FewShotEchoArm(tiny_corpus)
    evaluator(again)
    assert [[t for _, t in query] for query in again.examples["asr"]] == drawn["asr"]

    assert all(evaluator(_EchoArm(tiny_corpus)).metrics[name] is None for name in fewshot)
    off = Evaluator(
        tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6, few_shot={"shots": 0}
    )
    assert all(off(_FewShotEchoArm(tiny_corpus)).metrics[name] is None for name in fewshot)


def test_few_shot_metrics_are_na_without_the_train_audio(tiny_corpus, tmp_path, caplog):
    """A run evaluated away from its corpus's train audio (only the train manifest there): no few-shot
    prompt can be made, so those metrics are n/a, with a warning naming a missing file; the rest is scored."""
    import dataclasses

    from slmlab.eval.evaluate import Evaluator

    evaluator = Evaluator(tiny_corpus, _Judge(tiny_corpus), _Styles(), utterances=6)
    gone = str(tmp_path / "train_gone.wav")
    evaluator.train = [dataclasses.replace(r, audio_filepath=gone) for r in evaluator.train]
    with caplog.at_level("WARNING", logger="slmlab.eval.evaluate"):
        metrics = evaluator(_FewShotEchoArm(tiny_corpus)).metrics
    assert metrics["asr_wer_fewshot"] is None and metrics["tts_wer_fewshot"] is None
    assert metrics["asr_wer"] == 0.0
    assert any("few-shot metrics n/a" in m and gone in m for m in caplog.messages)


def _fake_run(
    folder: Path,
    arm: str,
    seed: int,
    eval_metrics: dict,
    val_curve: list[float],
    empty_outputs: dict | None = None,
    items: dict | None = None,
    judge_wer: float = 0.1,
    regime: str = "from_scratch",
    generation: dict | None = None,
    evaluated_with: dict | None = None,
) -> None:
    """generation: the run config's model.task.generation; evaluated_with: the decoding slmlab-eval recorded."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "seed": seed,
                "regime": regime,
                "model": {
                    "name": arm,
                    "task": {
                        "_target_": f"x.{arm}",
                        **({"generation": generation} if generation else {}),
                    },
                },
            }
        ),
        folder / ".hydra" / "config.yaml",
    )
    baselines = {
        "trivial_wer": 0.9,
        "trivial_cer": 0.8,
        "trivial_wer_output": "empty",
        "judge_wer": judge_wer,
        "judge_cer": 0.05,
        "style_majority": 0.3,
        "style_chance": 0.25,
        "style_classifier_accuracy": 0.8,
    }
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "parameters": 4_000_000,
                "train_tokens_per_second": 1000.0 + seed,
                "peak_memory_bytes": 2**30,
                "train_seconds": 120.0,
                "metrics": {"test/loss": 3.0},
                "eval": {
                    "metrics": eval_metrics,
                    "baselines": baselines,
                    "empty_outputs": empty_outputs or {},
                    "items": items or {},
                    **({"generation": evaluated_with} if evaluated_with else {}),
                },
            }
        )
    )
    writer = SummaryWriter(str(folder / "tensorboard"))
    for step, value in zip((200, 400, 600), val_curve):
        writer.add_scalar("val/loss", value, step)
    writer.close()


def _wer_items(edits: list[int]) -> dict:
    """asr_wer's items: 10 reference words per utterance, `edits` errors in each."""
    return {"ids": [f"u{i}" for i in range(len(edits))], "num": edits, "den": [10] * len(edits)}


def test_each_regime_is_a_row_of_its_own(tmp_path):
    """The same arm trained from scratch and from its recipe's pretrained parts: two rows, each aggregated
    over its own seeds, never averaged together."""
    from slmlab.eval.compare import aggregate, find_runs
    from slmlab.eval.evaluate import METRICS

    none = dict.fromkeys(METRICS)
    for i, (regime, seed, wer) in enumerate(
        [("from_scratch", 0, 0.9), ("from_scratch", 1, 0.8), ("recipe", 0, 0.3), ("recipe", 1, 0.2)]
    ):
        _fake_run(
            tmp_path / str(i), "speechlm", seed, {**none, "asr_wer": wer}, [3.0], regime=regime
        )
    runs, _ = find_runs(tmp_path)
    table = aggregate(runs)
    assert set(table) == {"speechlm", "speechlm (recipe)"}
    assert table["speechlm"]["asr_wer"].mean == pytest.approx(0.85)
    assert table["speechlm (recipe)"]["asr_wer"].mean == pytest.approx(0.25)
    assert table["speechlm (recipe)"]["asr_wer"].seeds == 2


def test_the_report_states_the_effect_of_pretraining_only_where_its_interval_says_so(tmp_path):
    """An arm trained in both regimes gets a line: the recipe's row minus the from-scratch row on the same
    items, better or worse only where the paired interval excludes 0 (here clearly better on asr_wer, clearly
    worse on asr_cer, unclear on text_ppl), and resynthesis, which both regimes share, left out."""
    from slmlab.eval.compare import write_report
    from slmlab.eval.evaluate import METRICS

    none = dict.fromkeys(METRICS)
    per_regime = {  # asr_wer edits, asr_cer edits, text_ppl nats (10 tokens each), resynthesis edits
        "from_scratch": ([6, 8] * 10, [1, 2] * 10, [25, 26] * 10, [3] * 20),
        "recipe": ([2, 3] * 10, [5, 6] * 10, [26, 25] * 10, [1] * 20),
    }
    for i, (regime, (wer, cer, nats, resynthesis)) in enumerate(per_regime.items()):
        figures = {  # each metric as its items give it
            "asr_wer": sum(wer) / 200,
            "asr_cer": sum(cer) / 200,
            "text_ppl": math.exp(sum(nats) / 200),
            "resynthesis_wer": sum(resynthesis) / 200,
        }
        _fake_run(
            tmp_path / "sweep" / str(i),
            "spiritlm_base",
            0,
            {**none, **figures},
            [3.0],
            items={
                "asr_wer": _wer_items(wer),
                "asr_cer": _wer_items(cer),
                "text_ppl": _wer_items(nats),
                "resynthesis_wer": _wer_items(resynthesis),
            },
            regime=regime,
        )
    write_report(
        tmp_path / "sweep", tmp_path / "out", "Does pretraining help?", ["x"], root=tmp_path
    )
    readme = (tmp_path / "out" / "README.md").read_text()
    effect = readme.split("## The effect of pretraining")[1]
    line = next(x for x in effect.splitlines() if x.startswith("- **spiritlm_base**"))
    better, worse = line.split("; worse on ")
    assert "asr_wer -0.450 [" in better and "asr_cer" not in better
    assert "asr_cer +0.400 [" in worse and "text_ppl" not in line
    assert line.endswith("no clear difference on 1 other.") and "resynthesis" not in line


def test_the_report_states_how_each_arm_was_decoded(tmp_path):
    """The decoding slmlab-eval recorded, else the run config's; an arm whose seeds differ shows each."""
    from slmlab.eval.compare import write_report
    from slmlab.eval.evaluate import METRICS

    none = dict.fromkeys(METRICS)
    runs = [
        ("speechlm", 0, {"num_beams": 1}, {"num_beams": 4, "ctc_weight": 0.3}),
        ("speechlm", 1, {"num_beams": 1}, {"num_beams": 1}),
        ("csm", 0, {"temperature": 0.9}, None),
    ]
    for i, (arm, seed, configured, evaluated_with) in enumerate(runs):
        _fake_run(
            tmp_path / "sweep" / str(i),
            arm,
            seed,
            none,
            [3.0],
            generation=configured,
            evaluated_with=evaluated_with,
        )
    write_report(tmp_path / "sweep", tmp_path / "out", "How?", ["x"], root=tmp_path)
    line = next(
        x
        for x in (tmp_path / "out" / "README.md").read_text().splitlines()
        if x.startswith("Decoding")
    )
    assert "csm: temperature 0.9" in line
    assert "speechlm: ctc_weight 0.3, num_beams 4 / num_beams 1" in line


def test_the_report_writer_on_fake_runs(tmp_path):
    from slmlab.eval.compare import write_report
    from slmlab.eval.evaluate import METRICS

    none = dict.fromkeys(METRICS)
    _fake_run(
        tmp_path / "sweep" / "0",
        "speechlm",
        0,
        {**none, "asr_wer": 0.40, "asr_cer": 0.2},
        [3.0, 2.0, 1.5],
        empty_outputs={"asr_wer": 2},  # two empty transcripts
        items={"asr_wer": _wer_items([2, 6] * 10)},  # 80 edits in 200 words
    )
    _fake_run(
        tmp_path / "sweep" / "1",
        "speechlm",
        1,
        {**none, "asr_wer": 0.50, "asr_cer": 0.3},
        [3.1, 2.2, 1.6],
        empty_outputs={"asr_wer": 1},
        items={"asr_wer": _wer_items([3, 7] * 10)},
    )
    # on the same utterances, 0.475: worse than speechlm's 0.45 by less than the items' spread
    _fake_run(
        tmp_path / "sweep" / "2",
        "spiritlm_base",
        0,
        {**none, "asr_wer": 0.475, "asr_wer_fewshot": 0.3},
        [3.3, 2.4, 1.9],
        items={
            "asr_wer": _wer_items([7, 3] * 5 + [1, 8] * 5),
            "asr_wer_fewshot": _wer_items([3] * 20),
        },
    )
    _fake_run(
        tmp_path / "sweep" / "3",
        "text_lm",
        0,
        {**none, "text_ppl": 12.0, "lexical_text": 0.7},  # scored without per-item records
        [4.0, 3.0, 2.9],
    )
    (tmp_path / "sweep" / "4" / ".hydra").mkdir(parents=True)  # a job that failed: no metrics.json
    (tmp_path / "sweep" / "4" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    out = tmp_path / "experiments" / "study"
    table = write_report(
        tmp_path / "sweep",
        out,
        "Which arm hears best?",
        ["slmlab-train -m experiment=x"],
        root=tmp_path,
    )
    wer = table["speechlm"]["asr_wer"]
    assert (wer.mean, wer.spread, wer.seeds) == (
        pytest.approx(0.45),
        pytest.approx(0.0707, abs=1e-3),
        2,
    )
    assert 0.3 < wer.low < 0.4 and 0.5 < wer.high < 0.6  # items and the two seeds' spread
    assert table["text_lm"]["asr_wer"] is None and table["speechlm"]["text_ppl"] is None
    readme = (out / "README.md").read_text()
    assert "Which arm hears best?" in readme and "slmlab-train -m experiment=x" in readme
    assert f"| speechlm | 0.450 ± 0.071 [{wer.low:.3f}, {wer.high:.3f}] |" in readme
    assert "| text_lm | n/a |" in readme
    asr = next(line for line in readme.splitlines() if line.startswith("- **asr_wer**"))
    assert (
        "best speechlm" in asr and "does not clearly beat spiritlm_base (difference -0.025" in asr
    )
    assert "speechlm beats it, spiritlm_base beats it" in asr  # both far below the trivial 0.9
    lexical = next(line for line in readme.splitlines() if line.startswith("- **lexical_text**"))
    assert "text_lm has no interval" in lexical  # no verdict without one
    assert "test utterances the arms are scored on is **0.100**" in readme
    assert "no metrics.json" in readme
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["arm"], r["seed"]) for r in rows[:4]] == [
        ("speechlm", "0"),
        ("speechlm", "1"),
        ("spiritlm_base", "0"),
        ("text_lm", "0"),
    ]
    assert rows[0]["run"] == "sweep/0"  # relative to the project root given
    assert rows[0]["asr_wer_empty"] == "2" and rows[1]["asr_wer_empty"] == "1"
    assert rows[3]["asr_wer_empty"] == ""  # text_lm transcribes nothing: n/a, not 0
    few_shot_table = readme.split("**Few-shot prompting")[1].split("**Likelihoods")[0]
    assert "| spiritlm_base | 0.300 [0.300, 0.300] | n/a |" in few_shot_table
    assert "| speechlm | n/a | n/a | n/a | n/a |" in few_shot_table
    few_shot = next(line for line in readme.splitlines() if "**asr_wer_fewshot**" in line)
    assert few_shot.startswith("- **asr_wer_fewshot** (trivial 0.900)")
    assert "spiritlm_base beats it" in few_shot
    generation_table = readme.split("**Few-shot prompting")[0]
    assert "| asr_wer 3 |" in generation_table and "| n/a |" in generation_table
    assert float(rows[0]["asr_wer_ci_low"]) < 0.4 < float(rows[0]["asr_wer_ci_high"])  # one run
    assert rows[3]["lexical_text_ci_low"] == "" and rows[3]["asr_wer_ci_low"] == ""
    mean = next(r for r in rows if r["arm"] == "speechlm" and r["seed"].startswith("mean"))
    assert mean["seed"] == "mean of 2" and float(mean["asr_wer"]) == pytest.approx(0.45)
    assert (float(mean["asr_wer_ci_low"]), float(mean["asr_wer_ci_high"])) == (wer.low, wer.high)
    assert (out / "val_curves.png").stat().st_size > 1000 and (
        out / "metrics.png"
    ).stat().st_size > 1000


@pytest.mark.parametrize("judge_edits", [[1] * 20, [9, 10] * 10])
def test_no_verdict_rests_on_a_judge_that_does_not_hear(judge_edits, tmp_path):
    """The judge's quality is checked in every report: the metrics it scores get verdicts only when its own
    WER on the real test audio beats the trivial output's (0.9) by its interval; a deaf judge (0.95 here)
    leaves them unjudged, however good the arm's figure looks."""
    from slmlab.eval.compare import write_report
    from slmlab.eval.evaluate import METRICS

    judge = _wer_items(judge_edits)
    _fake_run(
        tmp_path / "sweep" / "0",
        "csm",
        0,
        {**dict.fromkeys(METRICS), "tts_wer": 0.2},
        [3.0, 2.0, 1.5],
        items={"tts_wer": _wer_items([2] * 20), "judge_wer": judge},
        judge_wer=sum(judge["num"]) / sum(judge["den"]),
    )
    write_report(tmp_path / "sweep", tmp_path / "out", "Does CSM speak?", ["x"], root=tmp_path)
    readme = (tmp_path / "out" / "README.md").read_text()
    tts = next(line for line in readme.splitlines() if line.startswith("- **tts_wer**"))
    if judge_edits[0] == 1:  # the judge hears: WER 0.1
        assert "csm beats it" in tts and "does not hear" not in readme
    else:
        assert tts.startswith(
            "- **tts_wer**: not judged: the judge does not hear the real test audio"
        )
        assert "beats it" not in tts and "(its WER 0.950 [" in tts
        assert "**But the judge does not hear" in readme


def test_a_miniature_compare_tiny_sweep_end_to_end(data_dir, tmp_path):
    """`slmlab-train -m experiment=compare_tiny` on the tiny corpus for a few steps (both job slots, every
    arm trained, tested and evaluated), then `slmlab-compare` on its folder."""
    from conftest import TINY_EVAL, run_cli

    sweep = tmp_path / "sweep"
    settings = [
        f"paths.data_dir={data_dir}",
        "data.preset=tiny",
        *TINY_EVAL,
    ]
    # as make demo does: fit the tokenizers and judges first, so that the parallel jobs only read them
    run_cli("slmlab-prepare", *settings, "model=spiritlm_expressive", cwd=tmp_path)
    run_cli("slmlab-prepare", *settings, "model=csm", cwd=tmp_path)
    run_cli("slmlab-prepare", *settings, "model=text_lm", "evaluate=true", cwd=tmp_path)
    run_cli(
        "slmlab-train",
        "-m",
        "experiment=compare_tiny",
        *settings,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "+trainer.limit_val_batches=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=1200,
    )
    run_cli("slmlab-compare", f"sweep_dir={sweep}", f"out_dir={tmp_path / 'report'}", cwd=tmp_path)
    readme = (tmp_path / "report" / "README.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    arms = {"text_lm", "spiritlm_base_paired", "spiritlm_expressive_paired", "csm", "speechlm"}
    assert {r["arm"] for r in rows} == arms
    by_arm = {r["arm"]: r for r in rows if r["seed"] == "0"}
    assert by_arm["speechlm"]["asr_wer"] and not by_arm["speechlm"]["tts_wer"]
    assert (
        by_arm["csm"]["tts_wer"]
        and by_arm["csm"]["lexical_speech"]
        and by_arm["csm"]["true_codebook0_wer"]
        and not by_arm["csm"]["asr_wer"]
    )
    assert not any(by_arm[arm]["true_codebook0_wer"] for arm in arms - {"csm"})
    assert all(
        by_arm["spiritlm_base_paired"][k]
        for k in ("asr_wer", "tts_wer", "text_ppl", "lexical_speech", "style_accuracy")
    )
    assert by_arm["text_lm"]["text_ppl"] and not by_arm["text_lm"]["style_accuracy"]
    assert "judge ASR's WER on the real audio" in readme and "n/a" in readme
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # job folders, and so TensorBoard's runs, are named by the arm each job trains
    assert {p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()} == arms
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep)).Runs()
    assert {run.split("/")[0] for run in runs} == arms
    csm_run = next(r["run"] for r in rows if r["arm"] == "csm" and r["seed"] == "0")
    assert Path(csm_run).name == "csm"
    assert not Path(csm_run).is_absolute()  # relative to the project root, not this machine's paths
    events = EventAccumulator(
        str(REPO_ROOT / csm_run / "tensorboard"), size_guidance={"audio": 0, "images": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert {"eval/tts_0_generated", "eval/tts_0_reference"} <= set(
        tags["audio"]
    )  # the same sentence, both ways
    assert "eval/tts_0_spectrograms" in tags["images"] and "eval/tts_wer" in tags["scalars"]
    assert events.PluginTagToContent("hparams"), "the hparams table, with the eval metrics"

"""A run folder stands alone: a run trained by slmlab-train, copied to a new place without its corpus,
generates (slmlab-generate) and is evaluated given only its corpus's test items (slmlab-eval), with the
tokenizers it was trained with (the same token ids), and nothing is fitted or synthesised."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_EVAL, run_cli
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

import slmlab.data.datamodule  # noqa: F401  (every module that calls fit_once, for `fits` to watch)
import slmlab.eval.judge  # noqa: F401
import slmlab.eval.style  # noqa: F401
import slmlab.tokenizers.codecs  # noqa: F401
import slmlab.tokenizers.unit_vocoder  # noqa: F401
from slmlab import artifacts
from slmlab.artifacts import UnreadableFileError, load_tensors
from slmlab.constants import CODEC_SAMPLE_RATE, SAMPLE_RATE
from slmlab.data.manifest import audio_path, load_audio, read_split
from slmlab.data.synthetic import SyntheticCorpus
from slmlab.runs import (
    check_checkpoint_tokenizers,
    compose,
    fit_tokenizers,
    load_corpus,
    load_task,
    load_tokenizers,
    save_tokenizers,
)
from slmlab.tokenizers.text import fit_bpe

# a corpus's artifacts that belong to a run (its tokenizers, codec, vocoder and their token cache);
# the judge and the style classifier are the evaluation's
RUN_ARTIFACTS = ("bpe", "units", "codec", "unit_vocoder", "token_cache")


@dataclass
class TrainedRun:
    run: Path  # the run folder slmlab-train wrote
    corpus: Path  # the private copy of the tiny corpus it was trained on
    tokenizers: dict  # that corpus's tokenizers, as training loaded them


def run_config(run: Path):
    return OmegaConf.load(run / ".hydra" / "config.yaml")


@pytest.fixture(scope="module")
def judged_corpus(tiny_corpus, data_dir) -> Path:
    """The session's tiny corpus with the judge and style classifier of TINY_EVAL published in it
    (evaluation artifacts, fitted on the whole corpus, as slmlab-eval does on first use)."""
    cfg = compose("train", [f"paths.data_dir={data_dir}", "experiment=tiny_csm"])
    eval_cfg = compose("evaluate", ["ckpt_path=unused", *TINY_EVAL]).eval
    corpus = load_corpus(cfg)  # with the runs' record policy, which keys the artifacts
    instantiate(eval_cfg.judge, corpus=corpus)
    instantiate(eval_cfg.style_classifier, corpus=corpus)
    return Path(tiny_corpus.root)


@pytest.fixture(scope="module", params=["tiny_csm", "tiny_spiritlm_base"])
def trained(request, tiny_corpus, tmp_path_factory) -> TrainedRun:
    """A run trained 4 steps by slmlab-train on a private copy of the tiny corpus."""
    root = tmp_path_factory.mktemp(request.param)
    corpus = root / "data" / "synthetic" / Path(tiny_corpus.root).name
    shutil.copytree(tiny_corpus.root, corpus)
    run_cli(
        "slmlab-train",
        f"experiment={request.param}",
        f"paths.data_dir={root / 'data'}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "test=false",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
        timeout=1800,  # it fits the run's tokenizers, codec or vocoder on the corpus first
    )
    cfg = run_config(root / "run")
    return TrainedRun(root / "run", corpus, fit_tokenizers(cfg, load_corpus(cfg)))


def move_run(run: Path, dest: Path, data_dir: Path) -> Path:
    """Copy the run folder to `dest`, on a machine whose data folder is `data_dir` (its config says so),
    -> the copy's last checkpoint."""
    shutil.copytree(run, dest)
    cfg = run_config(dest)
    cfg.paths.data_dir = str(data_dir)
    OmegaConf.save(cfg, dest / ".hydra" / "config.yaml")
    return dest / "checkpoints" / "last.ckpt"


@pytest.fixture
def fits(monkeypatch) -> list[str]:
    """Every fit and synthesis started while the test runs: the destinations of `artifacts.fit_once`
    calls that call their `fit`, in every slmlab module that uses it, and `SyntheticCorpus.synthesise`."""
    started = []
    fit_once, synthesise = artifacts.fit_once, SyntheticCorpus.synthesise

    def watched_fit_once(dest, fit, *args, **kwargs):
        def watched_fit(tmp):
            started.append(str(dest))
            return fit(tmp)

        return fit_once(dest, watched_fit, *args, **kwargs)

    def watched_synthesise(corpus, tmp):
        started.append(f"synthesise {corpus.root}")
        return synthesise(corpus, tmp)

    for name, module in list(sys.modules.items()):
        if name.startswith("slmlab") and getattr(module, "fit_once", None) is fit_once:
            monkeypatch.setattr(module, "fit_once", watched_fit_once)
    monkeypatch.setattr(SyntheticCorpus, "synthesise", watched_synthesise)
    return started


def test_a_moved_run_generates_speech_without_its_corpus(trained, tmp_path):
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")  # no corpus there
    out = tmp_path / "generated"
    run_cli(
        "slmlab-generate",
        f"ckpt_path={ckpt}",
        "text=the dog runs",
        "modality=SPEECH",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert (out / "output.wav").is_file()
    assert not (tmp_path / "data").exists()  # nothing synthesised, nothing fitted
    assert "published" not in (out / "generate.log").read_text()  # artifacts.fit_once after a fit


def test_a_moved_run_is_evaluated_given_only_its_corpus_test_items(
    trained, judged_corpus, tmp_path
):
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")
    corpus = tmp_path / "data" / "synthetic" / trained.corpus.name
    shutil.copytree(trained.corpus, corpus)
    for kind in (
        "judge",
        "style_classifier",
    ):  # the evaluation's artifacts, keyed by the same inputs
        shutil.copytree(
            judged_corpus / "artifacts" / kind, corpus / "artifacts" / kind, dirs_exist_ok=True
        )
    for kind in RUN_ARTIFACTS:  # the run's tokenizers, codec and vocoder are not there
        shutil.rmtree(corpus / "artifacts" / kind, ignore_errors=True)
    for made in ("corpus.json", "artifact.json"):  # nor the marks of a synthesised corpus
        (corpus / made).unlink()
    (corpus / "val.jsonl").unlink()
    for split in ("train", "val"):
        for wav in [*corpus.glob(f"wav16k/{split}_*.wav"), *corpus.glob(f"wav24k/{split}_*.wav")]:
            wav.unlink()
    # left: the train manifest (transcripts only, for the trivial baselines) and the test manifest, test
    # and probe audio, probes, judges
    out = tmp_path / "evaluated"
    run_cli(
        "slmlab-eval",
        f"ckpt_path={ckpt}",
        *TINY_EVAL,
        "generation.temperature=0.5",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    evaluation = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]
    assert evaluation["metrics"] and evaluation["baselines"]["judge_utterances"] == 3
    assert evaluation["generation"]["temperature"] == 0.5  # the decoding it was scored with
    assert not [kind for kind in RUN_ARTIFACTS if (corpus / "artifacts" / kind).exists()]
    assert not (corpus / "corpus.json").exists()  # not synthesised again
    assert "published" not in (out / "eval.log").read_text()


def test_decoding_chosen_on_val_leaves_the_run_s_test_evaluation_and_keeps_one_result_per_setting(
    trained, judged_corpus, tmp_path
):
    """`slmlab-eval -m eval.split=val generation.temperature=...`: each setting scored on the first val
    utterances, in its own sweep job folder; the run's metrics.json (its test evaluation) is not touched."""
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")
    corpus = tmp_path / "data" / "synthetic" / trained.corpus.name
    shutil.copytree(trained.corpus, corpus)
    for kind in ("judge", "style_classifier"):
        shutil.copytree(
            judged_corpus / "artifacts" / kind, corpus / "artifacts" / kind, dirs_exist_ok=True
        )
    before = (tmp_path / "run" / "metrics.json").read_text()
    sweep = tmp_path / "sweep"
    run_cli(
        "slmlab-eval",
        "-m",
        f"ckpt_path={ckpt}",
        *TINY_EVAL,
        "eval.split=val",
        "generation.temperature=0.5,0.7",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    val, _ = read_split(load_corpus(run_config(tmp_path / "run")), "val")
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [set(r) for r in records] == [{"eval_val"}, {"eval_val"}]
    assert {r["eval_val"]["generation"]["temperature"] for r in records} == {0.5, 0.7}
    for record in records:
        assert record["eval_val"]["settings"]["split"] == "val"
        assert record["eval_val"]["items"]["tts_wer"]["ids"] == [r.id for r in val[:3]]


def test_a_moved_run_loads_the_tokenizers_it_was_trained_with(trained, tmp_path, fits):
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")
    task = load_task(ckpt)
    assert fits == [] and not (tmp_path / "data").exists()
    assert load_task(ckpt, generation={"temperature": 0.5}).generation["temperature"] == 0.5
    assert task.generation["temperature"] != 0.5
    # a CLI's generation node: its nulls keep the run's decoding
    node = OmegaConf.create({"temperature": None, "topk": 7})
    assert load_task(ckpt, generation=node).generation == {**task.generation, "topk": 7}
    assert task.tokenizer.source == tmp_path / "run" / "tokenizers" / "text"
    loaded = load_tokenizers(tmp_path / "run")
    original = trained.tokenizers
    assert loaded.keys() == original.keys() == {"text", "speech"}
    records, _ = read_split(load_corpus(run_config(trained.run)), "test")
    for record in records:
        assert loaded["text"].encode(record.text) == original["text"].encode(record.text)
    speech, speech_original = loaded["speech"], original["speech"]
    for record in records[:4]:
        if hasattr(speech, "encode_streams"):  # units, pitch, style
            wav = load_audio(record.audio_filepath, SAMPLE_RATE)
            streams = speech.encode_streams(wav)
            for name, ids in speech_original.encode_streams(wav).items():
                assert torch.equal(streams[name], ids), name
        else:  # a codec
            wav = load_audio(audio_path(record), CODEC_SAMPLE_RATE)
            codes = speech.encode(wav)
            assert torch.equal(codes, speech_original.encode(wav))
            assert torch.equal(speech.decode_mel(codes), speech_original.decode_mel(codes))
    if hasattr(speech, "decoder"):  # the unit vocoder: the same weights and settings
        state, original_state = (
            speech.decoder.model.state_dict(),
            speech_original.decoder.model.state_dict(),
        )
        assert state.keys() == original_state.keys()
        assert all(torch.equal(state[k], original_state[k]) for k in state)
        assert speech.decoder.mel == speech_original.decoder.mel


def test_the_checkpoint_records_the_task_arguments_as_hyperparameters(trained):
    checkpoint = load_tensors(trained.run / "checkpoints" / "last.ckpt")  # plain data only
    hparams = checkpoint["hyper_parameters"]
    assert not {"tokenizer", "speech_tokenizer"} & set(hparams)  # saved in <run>/tokenizers/
    configured = OmegaConf.to_container(run_config(trained.run).model.task, resolve=True)
    for name, value in configured.items():
        if name.startswith("_"):
            continue
        if (
            isinstance(value, dict) and "_target_" in value
        ):  # a partial: the config that rebuilds it
            assert hparams[name]["_partial_"] is True
            assert get_method(hparams[name]["_target_"]) is get_method(value["_target_"])
            keywords = {k: v for k, v in value.items() if not k.startswith("_")}
            assert {k: v for k, v in hparams[name].items() if not k.startswith("_")} == keywords
        else:
            assert hparams[name] == value, name


def test_a_run_made_before_runs_kept_their_tokenizers_loads_them_from_its_corpus(
    trained, tmp_path, fits, caplog
):
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")
    shutil.rmtree(tmp_path / "run" / "tokenizers")
    with pytest.raises(FileNotFoundError, match="and its corpus .* is gone") as error:
        load_task(ckpt)
    assert str(tmp_path / "run") in str(error.value)

    corpus = tmp_path / "data" / "synthetic" / trained.corpus.name
    shutil.copytree(trained.corpus, corpus)
    shutil.rmtree(corpus / "artifacts" / "bpe")  # gone since: fitted again, as before
    with caplog.at_level(logging.WARNING, logger="slmlab.runs"):
        task = load_task(ckpt)
    assert f"{tmp_path / 'run'} has no tokenizers/ folder" in caplog.text
    assert [Path(dest).parent.name for dest in fits] == ["bpe"]
    text = "the dog runs"
    assert task.tokenizer.encode(text) == trained.tokenizers["text"].encode(text)


def test_a_changed_tokenizer_in_the_run_folder_is_refused(trained, tmp_path, fits):
    ckpt = move_run(trained.run, tmp_path / "run", tmp_path / "data")
    text_folder = tmp_path / "run" / "tokenizers" / "text"
    shutil.rmtree(text_folder)
    fit_bpe(["the dog runs", "a cat sleeps"], vocab_size=300).save(text_folder)
    with pytest.raises(UnreadableFileError, match="does not hold the text tokenizer the run was"):
        load_task(ckpt)
    assert fits == []


def test_a_run_folder_keeps_the_tokenizers_it_was_first_trained_with(tmp_path):
    first = fit_bpe(["the dog runs", "the dog sleeps"], vocab_size=300)
    other = fit_bpe(["a cat sleeps", "a cat runs"], vocab_size=300)
    folder = save_tokenizers({"text": first}, tmp_path)
    assert save_tokenizers({"text": first}, tmp_path) == folder  # resumed into its own folder
    with pytest.raises(ValueError, match="holds other tokenizers than this run's"):
        save_tokenizers({"text": other}, tmp_path)
    assert load_tokenizers(tmp_path)["text"].fingerprint() == first.fingerprint()

    record = json.loads((folder / "artifact.json").read_text())
    record["text"]["class"] = "subprocess.Popen"  # only slmlab's tokenizer classes are loaded
    (folder / "artifact.json").write_text(json.dumps(record))
    with pytest.raises(UnreadableFileError, match="names subprocess.Popen for text, not a class"):
        load_tokenizers(tmp_path)


def test_a_checkpoint_of_another_run_must_share_its_tokenizers(tmp_path, caplog):
    """ckpt_path= from another run folder: refused when that run recorded other tokenizers (the weights
    would sit under other token ids), taken when they are the same, warned about when it records none."""
    first = fit_bpe(["the dog runs", "the dog sleeps"], vocab_size=300)
    other = fit_bpe(["a cat sleeps", "a cat runs"], vocab_size=300)
    for run, tokenizer in (("same", first), ("other", other), ("this", first)):
        save_tokenizers({"text": tokenizer}, tmp_path / run)
        (tmp_path / run / "checkpoints").mkdir()
    check_checkpoint_tokenizers(tmp_path / "same" / "checkpoints" / "last.ckpt", tmp_path / "this")
    with pytest.raises(ValueError, match="was trained with another text tokenizer"):
        check_checkpoint_tokenizers(
            tmp_path / "other" / "checkpoints" / "x.ckpt", tmp_path / "this"
        )
    with caplog.at_level(logging.WARNING, logger="slmlab.runs"):
        check_checkpoint_tokenizers(tmp_path / "alone" / "x.ckpt", tmp_path / "this")
    assert "its tokenizers cannot be checked" in caplog.text

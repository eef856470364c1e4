"""The text LM made per corpus (`slmlab.pretrain.text_lm`): held-out sentences never trained on, the
folder loads as an external checkpoint, training lowers val perplexity, a second call reads the cache."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmlab.data.grammar import Grammar
from slmlab.data.manifest import read_labels
from slmlab.models.llama import build_llama_lm
from slmlab.models.pretrained import load_local
from slmlab.pretrain import text_lm
from slmlab.tokenizers.text import TextTokenizer, load_or_fit_bpe

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
TINY_QWEN2 = {**TINY_LLAMA, "model_type": "qwen2"}
FIT = {"steps": 60, "batch_size": 4, "context": 32, "lr": 1e-2, "warmup_steps": 5}


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus) -> TextTokenizer:
    return load_or_fit_bpe(tiny_corpus)


def fit_keeping_model(corpus, tokenizer, model: dict, **fit) -> tuple:
    """load_or_fit_text_lm, with the model object it trained kept -> (folder, fitted model)."""
    trained = []

    def train_and_keep(lm, *args, **kwargs):
        trained.append(lm)
        return train(lm, *args, **kwargs)

    train = text_lm.train_text_lm
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(text_lm, "train_text_lm", train_and_keep)
        folder = text_lm.load_or_fit_text_lm(corpus, tokenizer, model, **fit)
    assert len(trained) == 1, "the fit did not run (a folder from an earlier session?)"
    return folder, trained[0].eval()


@pytest.fixture(scope="module")
def fitted_llama(tiny_corpus, tokenizer) -> tuple:
    return fit_keeping_model(tiny_corpus, tokenizer, TINY_LLAMA, **FIT)


def test_never_trains_on_a_val_test_or_probe_sentence(tiny_corpus, tokenizer, monkeypatch):
    # the corpus's own grammar stream: it proposes every val and test sentence in its first draws
    corpus_stream = Grammar(random.Random(tiny_corpus.seed))
    proposed, batches = [], []

    def stream(seed):
        while True:
            proposed.append(corpus_stream.sentence().text)
            yield proposed[-1]

    pack = text_lm.packed_batches

    def packed_and_kept(*args, **kwargs):
        for batch in pack(*args, **kwargs):
            batches.append(batch)
            yield batch

    monkeypatch.setattr(text_lm, "grammar_sentences", stream)
    monkeypatch.setattr(text_lm, "packed_batches", packed_and_kept)
    folder = text_lm.load_or_fit_text_lm(tiny_corpus, tokenizer, TINY_LLAMA, **FIT | {"seed": 7})

    held_out = text_lm.held_out_texts(tiny_corpus)
    proposed_held_out = [t for t in proposed if text_lm.normalise(t) in held_out]
    val_texts = {text_lm.normalise(r.text) for r in read_labels(tiny_corpus, "val")}
    assert val_texts <= {text_lm.normalise(t) for t in proposed_held_out}
    # what the model trained on: the packed stream of ids, cut into whole <s> ... </s> sentences
    ids = torch.cat([batch.flatten() for batch in batches]).tolist()
    starts = [i for i, token in enumerate(ids) if token == tokenizer.bos_id]
    trained = [ids[a:b] for a, b in zip(starts, starts[1:]) if ids[b - 1] == tokenizer.eos_id]
    trained_texts = {text_lm.normalise(tokenizer.decode(sentence)) for sentence in trained}
    assert len(trained_texts) > 100
    assert not trained_texts & held_out
    stream_count = json.loads((folder / "artifact.json").read_text())["stream"]
    assert stream_count["excluded"] == len(proposed_held_out) > 0
    assert stream_count["drawn"] == len(proposed)


def test_llama_folder_loads_as_an_external_checkpoint(fitted_llama, tokenizer):
    folder, fitted = fitted_llama
    loaded = build_llama_lm(len(tokenizer), pretrained_path=str(folder)).eval()
    ids = torch.tensor([tokenizer.encode("the dog sees the cat") + tokenizer.encode("anna runs")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fitted(ids).logits)
    assert TextTokenizer.from_pretrained(folder).fingerprint() == tokenizer.fingerprint()


def test_qwen2_folder_loads_as_a_speechlm_decoder(tiny_corpus, tokenizer):
    folder, fitted = fit_keeping_model(tiny_corpus, tokenizer, TINY_QWEN2, **FIT | {"steps": 5})
    loaded = load_local(AutoModelForCausalLM, str(folder)).eval()
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([tokenizer.encode("the dog sees the cat")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fitted(ids).logits)


def test_training_lowers_val_perplexity(fitted_llama, tiny_corpus, tokenizer):
    folder, fitted = fitted_llama
    record = json.loads((folder / "artifact.json").read_text())
    assert record["val_perplexity"] < record["val_perplexity_untrained"] / 2
    val_texts = [r.text for r in read_labels(tiny_corpus, "val")]
    recomputed = text_lm.perplexity(fitted, tokenizer, val_texts)
    assert recomputed == pytest.approx(record["val_perplexity"], abs=1e-3)


def test_second_call_reads_the_cache(fitted_llama, tiny_corpus, tokenizer, monkeypatch):
    folder, _ = fitted_llama

    def no_refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(text_lm, "train_text_lm", no_refit)
    assert text_lm.load_or_fit_text_lm(tiny_corpus, tokenizer, TINY_LLAMA, **FIT) == folder

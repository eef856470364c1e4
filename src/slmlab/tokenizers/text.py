"""The shared text tokenizer: a BPE fitted on the corpus, or a pretrained one from a local path.

Both are a transformers `PreTrainedTokenizerFast` behind `TextTokenizer`, so the arms extend the
vocabulary the transformers way (`add_special_tokens`) and save it with `save_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from slmlab.artifacts import artifact_dir, fit_once, manifest_fingerprints
from slmlab.data.manifest import fitting_subset, read_split

log = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


class TextTokenizer:
    """ids = tok.encode("the dog runs") -> [bos, ..., eos]; tok.decode(ids) -> "the dog runs"."""

    def __init__(self, hf: PreTrainedTokenizerFast) -> None:
        if hf.pad_token is None:  # Llama-style tokenizers ship without one
            hf.add_special_tokens({"pad_token": PAD})
        self.hf = hf
        # the folder it was loaded from: a fitted BPE, a pretrained tokenizer, a run's copy
        self.source: Path | None = None

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    def encode(self, text: str, bos: bool = True, eos: bool = True) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens).strip()

    def decode_batch(self, rows, skip_special_tokens: bool = True) -> list[str]:
        """`decode` of many id lists in one call to the Rust tokenizer (transformers' `batch_decode` calls
        `decode` once per list), with the same clean-up of spaces as `decode`."""
        texts = self.hf.backend_tokenizer.decode_batch(
            [list(ids) for ids in rows], skip_special_tokens=skip_special_tokens
        )
        if self.hf.clean_up_tokenization_spaces:
            texts = [self.hf.clean_up_tokenization(text) for text in texts]
        return [text.strip() for text in texts]

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Append tokens that are never split (e.g. `[TEXT]`, `[Hu12]`); returns their ids."""
        self.hf.add_special_tokens(
            {"additional_special_tokens": list(tokens)}, replace_additional_special_tokens=False
        )
        return self.hf.convert_tokens_to_ids(list(tokens))

    def fingerprint(self) -> str:
        """Changes whenever the mapping text -> ids can change (cache key)."""
        return hashlib.sha1(self.hf.backend_tokenizer.to_str().encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TextTokenizer:
        """A tokenizer folder on local disk (Llama, Qwen, ... or one saved by `save`); never a hub id."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer folder not found: {path} (slmlab never downloads; pass a local path)"
            )
        tokenizer = cls(
            AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        )
        tokenizer.source = path
        return tokenizer

    load = from_pretrained  # every tokenizer, codec and vocoder: `save(folder)`, `cls.load(folder)`


def fit_bpe(texts, vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE (as GPT-2/Llama-3 use) fitted with the `tokenizers` library on an iterable of
    texts, read as it goes (`train_from_iterator`)."""
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    return TextTokenizer(hf)


def load_or_fit_bpe(
    corpus, vocab_size: int = 1024, min_frequency: int = 2, max_hours: float = 1000.0
) -> TextTokenizer:
    """`tokenizer/text=bpe`: fit on the transcripts of at most `max_hours` of the corpus's train audio (a
    random subset, `fitting_subset`) once, saved under `<corpus>/artifacts/bpe/` (`artifacts.py`; the
    utterances and hours used in its artifact.json, `fitted_on`, and in `fitted_on.json`)."""
    settings = {"vocab_size": vocab_size, "min_frequency": min_frequency, "max_hours": max_hours}
    inputs = manifest_fingerprints(corpus, "train")
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> None:
        records, record["fitted_on"] = fitting_subset(read_split(corpus, "train")[0], max_hours)
        tokenizer = fit_bpe((r.text for r in records), vocab_size, min_frequency)
        tokenizer.save(tmp)
        fitted_on = {
            "manifest": str(corpus.manifest("train")),
            "records": len(records),
            "vocab_size": len(tokenizer),
            **record["fitted_on"],
        }
        (tmp / "fitted_on.json").write_text(json.dumps(fitted_on))
        log.info("fitted a %d-token BPE on %s", len(tokenizer), json.dumps(record["fitted_on"]))

    folder = artifact_dir(corpus.root, "bpe", f"bpe{vocab_size}", settings, inputs)
    return fit_once(folder, fit, TextTokenizer.from_pretrained, record)


def load_pretrained(path: str, corpus=None) -> TextTokenizer:
    """`tokenizer/text=hf_pretrained`: `corpus` is accepted for a uniform call and not used."""
    return TextTokenizer.from_pretrained(path)

"""The text LM made per corpus: a transformers causal LM (Llama or Qwen2) at an arm's LM sizes, pretrained
on an endless seeded stream of sentences from `data/grammar.py`, the grammar that wrote the corpus.

    folder = load_or_fit_text_lm(corpus, tokenizer, {"model_type": "llama", "hidden_size": 256, ...})
    lm = build_llama_lm(len(tokenizer), pretrained_path=str(folder))   # as a real Llama loads

- **Vocabulary**: exactly the corpus's BPE (`len(tokenizer)`, its bos/eos/pad ids), so that the arms resize
  or copy its embeddings by token id.
- **Held out**: every sentence of the corpus's val and test manifests and every probe item's text
  (`probes/*.jsonl`: both sides of each pair) is dropped from the stream, compared after the corpus's
  normalisation (Unicode NFC, stripped) with case and spacing folded too. Train sentences may appear.
  The sentences drawn and excluded are counted, logged and recorded in `artifact.json` (`stream`).
- **Batches**: each sentence is encoded `<s> ... </s>` and the sentences are packed end to end into
  `batch_size` rows of `context` tokens (no padding; a row may start or end inside a sentence), as LM
  pretraining packs documents.
- **Fit**: AdamW, linear warm-up then cosine decay, gradients clipped to norm 1.0, `torch.manual_seed(seed)`.
- **Held-out perplexity**: per BPE token (every token after `<s>`, `</s>` included) on the corpus's val
  transcripts, each sentence alone; of the untrained model and of the fitted one, logged and recorded in
  `artifact.json` (`val_perplexity_untrained`, `val_perplexity`).
- **Stored** with `artifacts.fit_once` under `<corpus>/artifacts/text_lm/<model_type>-<layers>x<hidden>-<key>/`
  as `model.save_pretrained` (safetensors) plus the tokenizer's files: a local Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, get_cosine_schedule_with_warmup

from slmlab.artifacts import artifact_dir, fingerprint, fit_once, manifest_fingerprints
from slmlab.data.grammar import Grammar
from slmlab.data.manifest import read_labels

log = logging.getLogger(__name__)

# the texts of a probe item: probes/<name>.jsonl pairs (good and bad), probes/<name>_audio.jsonl lines
PROBE_TEXT_KEYS = ("good_text", "bad_text", "text")
LOG_EVERY = 100  # steps between two loss lines in the log


@dataclass
class StreamCount:
    """Sentences the grammar proposed (`drawn`) and those dropped as held out (`excluded`)."""

    drawn: int = 0
    excluded: int = 0


def normalise(text: str) -> str:
    """The form in which texts are compared: the corpus's (NFC, stripped), case and spacing folded."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def probe_files(corpus) -> list[Path]:
    """`<corpus.root>/probes/*.jsonl` in name order; none for a corpus without probes."""
    return sorted((Path(corpus.root) / "probes").glob("*.jsonl"))


def held_out_texts(corpus) -> set[str]:
    """The normalised texts the LM must never see: the val and test transcripts and every probe item."""
    texts = {r.text for split in ("val", "test") for r in read_labels(corpus, split)}
    for path in probe_files(corpus):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{n}: not a JSON object ({error})") from None
            texts |= {row[key] for key in PROBE_TEXT_KEYS if isinstance(row.get(key), str)}
    return {normalise(text) for text in texts}


def grammar_sentences(seed: int | str) -> Iterator[str]:
    """An endless stream of grammar sentences, the same for the same seed. The corpus draws its own
    sentences from `Random(corpus.seed)`; the stream's generator is seeded apart (`text_lm-<seed>`)."""
    grammar = Grammar(random.Random(f"text_lm-{seed}"))
    while True:
        yield grammar.sentence().text


def training_sentences(
    stream: Iterable[str], held_out: set[str], count: StreamCount
) -> Iterator[str]:
    """The sentences of `stream` whose normalised text is not in `held_out`; `count` is kept up to date."""
    for text in stream:
        count.drawn += 1
        if normalise(text) in held_out:
            count.excluded += 1
            continue
        yield text


def packed_batches(
    sentences: Iterable[str], tokenizer, batch_size: int, context: int
) -> Iterator[torch.Tensor]:
    """(batch_size, context) token ids: the sentences encoded `<s> ... </s>` and laid end to end."""
    size, buffer = batch_size * context, []
    for text in sentences:
        buffer += tokenizer.encode(text)
        if len(buffer) >= size:
            yield torch.tensor(buffer[:size]).view(batch_size, context)
            buffer = buffer[size:]


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 64) -> float:
    """exp(mean negative log-likelihood per BPE token) of `texts`, each encoded `<s> ... </s>` alone and
    scored on every token after `<s>` (padding masked)."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [tokenizer.encode(text) for text in texts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_id)
        mask = torch.zeros_like(ids)
        for row, sentence in enumerate(encoded):
            ids[row, : len(sentence)], mask[row, : len(sentence)] = torch.tensor(sentence), 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        ).item()
        tokens += int((targets != -100).sum())
    return math.exp(total / tokens)


def build_text_lm(model: dict, tokenizer) -> torch.nn.Module:
    """A fresh causal LM: transformers' config of `model["model_type"]` with `model`'s other keywords, the
    tokenizer's vocabulary size and special ids."""
    config = AutoConfig.for_model(
        **model,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    return AutoModelForCausalLM.from_config(config)


def train_text_lm(
    lm, batches: Iterator[torch.Tensor], steps: int, lr: float, warmup_steps: int
) -> list[float]:
    """`steps` AdamW steps of next-token prediction on `batches`, warm-up then cosine decay, gradients
    clipped to norm 1.0: a plain loop (a fit like the judge's, not a Lightning run) -> the training losses."""
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    lm.train()
    losses = []
    for step, ids in zip(range(1, steps + 1), batches):
        loss = lm(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % LOG_EVERY == 0 or step == steps:
            log.info("text LM step %d/%d: loss %.3f", step, steps, loss.item())
    if len(losses) < steps:
        raise RuntimeError(f"the sentence stream ran out after {len(losses)} of {steps} steps")
    return losses


def load_or_fit_text_lm(
    corpus,
    tokenizer,
    model: dict,
    steps: int = 360,
    batch_size: int = 4,
    context: int = 128,
    lr: float = 3e-3,
    warmup_steps: int = 30,
    seed: int = 0,
) -> Path:
    """The folder of the text LM of sizes `model` (transformers config keywords with `model_type`: "llama"
    or "qwen2") pretrained for `steps` steps of `batch_size` x `context` packed tokens of grammar text,
    fitted by the first call for these settings, corpus and tokenizer and read from the cache after. The
    defaults (`conf/pretrain/default.yaml`): a 4 x 256 Llama fits in about 3.5 min on one CPU thread, val
    perplexity 1090 -> 17 on the default corpus (4 x 128-token rows x 360 steps = 184 k tokens, 16 k
    sentences; lr 6e-3 gave 30, 8 rows x 180 steps 33, 2 rows x 720 steps 17.5 in more time)."""
    model = dict(model)
    if model.get("model_type") not in ("llama", "qwen2"):
        raise ValueError(f"text LM model_type: 'llama' or 'qwen2', got {model.get('model_type')!r}")
    settings = {
        "model": model,
        "steps": steps,
        "batch_size": batch_size,
        "context": context,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
    }
    probes = b"".join(
        path.name.encode() + b"\0" + path.read_bytes() for path in probe_files(corpus)
    )
    inputs = {
        **manifest_fingerprints(corpus, "val", "test"),
        "tokenizer": tokenizer.fingerprint(),
        "probes": fingerprint(probes),
    }
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> None:
        started = time.perf_counter()
        held_out = held_out_texts(corpus)
        val_texts = [r.text for r in read_labels(corpus, "val")]
        torch.manual_seed(seed)
        lm = build_text_lm(model, tokenizer)
        untrained = perplexity(lm, tokenizer, val_texts)
        count = StreamCount()
        sentences = training_sentences(grammar_sentences(seed), held_out, count)
        losses = train_text_lm(
            lm, packed_batches(sentences, tokenizer, batch_size, context), steps, lr, warmup_steps
        )
        record.update(
            stream={**asdict(count), "held_out": len(held_out)},
            val_perplexity_untrained=round(untrained, 3),
            val_perplexity=round(perplexity(lm, tokenizer, val_texts), 3),
            val_sentences=len(val_texts),
            final_train_loss=round(losses[-1], 4),
            parameters=sum(p.numel() for p in lm.parameters()),
            fit_seconds=round(time.perf_counter() - started, 1),
        )
        lm.save_pretrained(tmp)
        tokenizer.save(tmp)
        log.info(
            "text LM fitted: %s", json.dumps({k: v for k, v in record.items() if k != "inputs"})
        )

    name = f"{model['model_type']}-{model.get('num_hidden_layers')}x{model.get('hidden_size')}"
    folder = artifact_dir(corpus.root, "text_lm", name, settings, inputs)
    return fit_once(folder, fit, Path, record)

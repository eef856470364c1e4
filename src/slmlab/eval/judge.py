"""The judge ASR that scores every speech output of the study.

By default a small character CTC recogniser (a stride-2 convolution, then torchaudio's `Conformer`; greedy
decoding, then each word snapped to the corpus's lexicon) is fitted once on the corpus's real train audio,
frozen and cached under `<corpus>/artifacts/judge/` (`artifacts.py`); its WER on the real test audio is
the floor of every speech-output metric. At scale, `eval.judge.pretrained_path` names a local
transformers recogniser (CTC or Whisper) that replaces it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchaudio

from slmlab.artifacts import (
    artifact_dir,
    fit_once,
    load_json,
    load_tensors,
    manifest_fingerprints,
)
from slmlab.constants import CTC_ALPHABET, SAMPLE_RATE
from slmlab.data.manifest import AudioOf, fitting_subset, read_split
from slmlab.eval.metrics import error_rates, normalise_text

log = logging.getLogger(__name__)


class LogMel:
    """wav [S] at 16 kHz -> per-utterance normalised log-mel [S // 160, n_mels] at 100 Hz."""

    def __init__(self, n_mels: int = 80) -> None:
        self.transform = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=n_mels
        )

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        mel = self.transform(wav).clamp_min(1e-6).log()[:, : max(1, len(wav) // 160)].T
        return (mel - mel.mean(0)) / mel.std(0).clamp_min(1e-3)


class CTCRecognizer(nn.Module):
    """mel [B, T, n_mels] at 100 Hz -> character log-probs [B, T / 2**strides, 1 + len(CTC_ALPHABET)]: stride-2
    convolutions (one gives 50 Hz, enough frames for fast speech's ~20 characters/s), then torchaudio's Conformer."""

    def __init__(
        self,
        n_mels: int = 80,
        dim: int = 96,
        layers: int = 4,
        heads: int = 4,
        ffn_dim: int = 384,
        kernel_size: int = 15,
        strides: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        convs = [
            nn.Sequential(
                nn.Conv1d(n_mels if i == 0 else dim, dim, 3, stride=2, padding=1), nn.GELU()
            )
            for i in range(strides)
        ]
        self.subsample, self.strides = nn.Sequential(*convs), strides
        self.conformer = torchaudio.models.Conformer(
            dim, heads, ffn_dim, layers, kernel_size, dropout=dropout
        )
        self.head = nn.Linear(dim, 1 + len(CTC_ALPHABET))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.strides):
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(
        self, mel: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.subsample(mel.transpose(1, 2)).transpose(1, 2)
        lengths = self.output_lengths(lengths).clamp(max=x.shape[1])
        x, lengths = self.conformer(x, lengths)
        return self.head(x).log_softmax(-1), lengths


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best path: argmax per frame, repeats merged, blanks dropped."""
    texts = []
    for path, n in zip(log_probs.argmax(-1), lengths.tolist()):
        path = torch.unique_consecutive(path[:n])
        texts.append(normalise_text("".join(CTC_ALPHABET[i - 1] for i in path.tolist() if i > 0)))
    return texts


def _pad(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(m) for m in mels])
    return nn.utils.rnn.pad_sequence(mels, batch_first=True), lengths


class Lexicon:
    """Closed-vocabulary decoding for a corpus whose words are all known (the embedded grammar's): each
    decoded word becomes the nearest lexicon word by edit distance (rapidfuzz; replaces a lexicon-constrained
    CTC beam search such as flashlight's). Word merges and splits stay errors."""

    def __init__(self, words: list[str]) -> None:
        self.words = sorted(set(words))
        self._nearest: dict[str, str] = {}

    def nearest(self, word: str) -> str:
        if word not in self._nearest:
            from rapidfuzz import process
            from rapidfuzz.distance import Levenshtein

            self._nearest[word] = process.extractOne(word, self.words, scorer=Levenshtein.distance)[
                0
            ]
        return self._nearest[word]

    def __call__(self, text: str) -> str:
        return " ".join(self.nearest(w) for w in text.split())


class CTCJudge:
    """The fitted judge: `transcribe(waveforms at 16 kHz) -> normalised texts`, greedy CTC, then the
    lexicon's nearest words when it has one."""

    def __init__(self, model: CTCRecognizer, config: dict) -> None:
        self.model, self.config, self.features = model.eval(), config, LogMel(config["n_mels"])
        self.lexicon = Lexicon(config["lexicon"]) if config.get("lexicon") else None

    @torch.no_grad()
    def transcribe(self, waveforms, batch_size: int = 32) -> list[str]:
        """waveforms: a list, or `AudioOf` records (read a batch at a time)."""
        texts = []
        for i in range(0, len(waveforms), batch_size):
            batch = [waveforms[j] for j in range(i, min(i + batch_size, len(waveforms)))]
            mel, lengths = _pad([self.features(w) for w in batch])
            texts += greedy_ctc(*self.model(mel, lengths))
        return [self.lexicon(t) for t in texts] if self.lexicon else texts

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"config": self.config, "state_dict": self.model.state_dict()}, folder / "judge.pt"
        )

    @classmethod
    def load(cls, folder: Path) -> CTCJudge:
        state = load_tensors(folder / "judge.pt")
        model = CTCRecognizer(**state["config"]["model"])
        model.load_state_dict(state["state_dict"])
        return cls(model, state["config"])


class PretrainedJudge:
    """A local transformers recogniser (a CTC model or Whisper with its processor), through the
    `automatic-speech-recognition` pipeline; slmlab never downloads one."""

    def __init__(self, path: str) -> None:
        from transformers import pipeline

        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"judge ASR folder not found: {path} (slmlab never downloads; "
                "save a transformers recogniser there with save_pretrained)"
            )
        self.path, self.pipeline = (
            path,
            pipeline("automatic-speech-recognition", model=path, device="cpu"),
        )

    @torch.no_grad()
    def transcribe(self, waveforms: list[torch.Tensor], batch_size: int = 8) -> list[str]:
        inputs = [{"raw": w.numpy(), "sampling_rate": SAMPLE_RATE} for w in waveforms]
        return [normalise_text(out["text"]) for out in self.pipeline(inputs, batch_size=batch_size)]


def _batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Length-sorted batches in random order (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def fit_ctc_judge(
    waveforms,
    texts: list[str],
    model: dict,
    epochs: float = 10.0,
    batch_size: int = 32,
    lr: float = 3e-3,
    lexicon: bool | list[str] = True,
    n_mels: int = 80,
    seed: int = 0,
) -> CTCJudge:
    """Fit the CTC recogniser on 16 kHz waveforms [S] and their transcripts for `epochs` passes, with AdamW,
    linear warm-up over the first 10 % of the steps and cosine decay. `waveforms` (a list, or `AudioOf`
    records) is read once for the lengths, then a batch at a time: a batch's log-mel is made at each step,
    so that no utterance's features stay in memory. `lexicon`: the words of `texts` (True), of the texts
    given (all of a corpus's transcripts when the audio is a subset), or none (False)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    features = LogMel(n_mels)
    frames = [max(1, len(w) // 160) for w in waveforms]  # LogMel's length at 100 Hz
    targets = [torch.tensor([CTC_ALPHABET.index(c) + 1 for c in normalise_text(t)]) for t in texts]
    steps = max(1, math.ceil(epochs * len(frames) / batch_size))
    warmup = max(1, steps // 10)
    recognizer = CTCRecognizer(n_mels=n_mels, **model)
    optimizer = torch.optim.AdamW(recognizer.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    ctc = nn.CTCLoss(zero_infinity=True)
    recognizer.train()
    step, started = 0, time.perf_counter()
    while step < steps:
        for batch in _batches(frames, batch_size, generator):
            mel, lengths = _pad([features(waveforms[i]) for i in batch])
            log_probs, out_lengths = recognizer(mel, lengths)
            labels = torch.cat([targets[i] for i in batch])
            loss = ctc(
                log_probs.transpose(0, 1),
                labels,
                out_lengths,
                torch.tensor([len(targets[i]) for i in batch]),
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(recognizer.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            if step % 250 == 0 or step == steps - 1:
                log.info(
                    "judge step %d: CTC loss %.3f (%.0f s)",
                    step,
                    loss.item(),
                    time.perf_counter() - started,
                )
            step += 1
            if step == steps:
                break
    lexicon_texts = texts if lexicon is True else lexicon or []
    words = sorted({w for t in lexicon_texts for w in normalise_text(t).split()}) or None
    return CTCJudge(recognizer, {"model": model, "n_mels": n_mels, "lexicon": words})


def load_or_fit_judge(
    corpus,
    pretrained_path: str | None = None,
    model: dict | None = None,
    epochs: float = 10.0,
    batch_size: int = 32,
    lr: float = 3e-3,
    lexicon: bool = True,
    max_hours: float = 2.0,
    seed: int = 0,
):
    """The judge for `corpus`: the local recogniser at `pretrained_path`, or the CTC judge fitted by the
    first call on at most `max_hours` of the corpus's train audio (a random subset, `fitting_subset`; the
    utterances and hours used in its artifact.json, `fitted_on`), saved under
    `<corpus>/artifacts/judge/ctc-<key>/` with `floor.json`, its WER and CER on the real test audio."""
    if pretrained_path:
        return PretrainedJudge(pretrained_path)
    model = dict(model or {})
    settings = {
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lexicon": lexicon,
        "max_hours": max_hours,
        "seed": seed,
    }
    inputs = manifest_fingerprints(corpus, "train", "test")
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> CTCJudge:
        train, _ = read_split(corpus, "train")
        records, record["fitted_on"] = fitting_subset(train, max_hours, seed)
        log.info(
            "fitting the judge ASR for %s epochs on %s", epochs, json.dumps(record["fitted_on"])
        )
        started = time.perf_counter()
        judge = fit_ctc_judge(
            AudioOf(records, SAMPLE_RATE),
            [r.text for r in records],
            model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            lexicon=[r.text for r in train] if lexicon else False,
            seed=seed,
        )
        test, _ = read_split(corpus, "test")
        hypotheses = judge.transcribe(AudioOf(test, SAMPLE_RATE))
        judge.floor = {
            **error_rates(hypotheses, [r.text for r in test]),
            "utterances": len(test),
            "fit_seconds": round(time.perf_counter() - started, 1),
        }
        judge.save(tmp)
        (tmp / "floor.json").write_text(json.dumps(judge.floor, indent=2) + "\n")
        log.info("judge ASR on the real test audio: %s", json.dumps(judge.floor))
        return judge  # artifact.json, written after fit, holds record["fitted_on"]

    def load(folder: Path) -> CTCJudge:
        judge = CTCJudge.load(folder)
        judge.floor = load_json(folder / "floor.json")
        return judge

    folder = artifact_dir(corpus.root, "judge", "ctc", settings, inputs)
    return fit_once(folder, fit, load, record)

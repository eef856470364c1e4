"""The style classifier of the style-preservation probe (as Spirit LM's STSP classifies sentiment).

Prosody statistics of a clip (pitch level and range, voicing, loudness, spectral change and syllable rate)
feed a multinomial logistic regression (replaces scikit-learn's `LogisticRegression`), fitted on random
crops of the corpus's real train audio and cached under `<corpus>/artifacts/style_classifier/`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio

from slmlab.artifacts import artifact_dir, fit_once, load_tensors, manifest_fingerprints
from slmlab.constants import SAMPLE_RATE
from slmlab.data.manifest import AudioOf, fitting_subset, read_labels, read_split
from slmlab.eval.metrics import classification_accuracy
from slmlab.tokenizers.units import f0_contour

log = logging.getLogger(__name__)

_MEL = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=40)


def prosody_features(wav: torch.Tensor) -> torch.Tensor:
    """wav [S] at 16 kHz -> [9]: voiced log-F0 mean, spread, 10-90 % range and slope; voiced fraction;
    loudness mean and spread (dB) over loud frames; mean spectral change; loudness peaks per second."""
    f0 = f0_contour(wav)
    frames = len(f0)
    energy = 10 * wav[: frames * 160].reshape(frames, 160).pow(2).mean(1).clamp_min(1e-10).log10()
    loud = energy > energy.max() - 35
    voiced = f0[f0 > 0].log()
    if len(voiced) > 2:
        low, high = torch.quantile(voiced, torch.tensor([0.1, 0.9]))
        slope = torch.linalg.lstsq(
            torch.stack([torch.arange(len(voiced)) / 100.0, torch.ones(len(voiced))], 1),
            voiced[:, None],
        ).solution[0, 0]
        pitch = [voiced.mean(), voiced.std(), high - low, slope.clamp(-5, 5)]
    else:
        pitch = [torch.tensor(0.0)] * 4
    mel = _MEL(wav).clamp_min(1e-6).log()[:, :frames]
    flux = (mel[:, 1:] - mel[:, :-1]).abs().mean() if mel.shape[1] > 1 else torch.tensor(0.0)
    envelope = F.avg_pool1d(energy[None, None], 5, 1, 2)[0, 0] if frames >= 5 else energy
    peaks = (
        ((envelope[1:-1] > envelope[:-2]) & (envelope[1:-1] >= envelope[2:]) & loud[1:-1]).sum()
        if frames > 2
        else 0
    )
    return torch.stack(
        [
            *pitch,
            (f0 > 0).float().mean(),
            energy[loud].mean(),
            energy[loud].std().nan_to_num(),
            flux,
            torch.as_tensor(peaks, dtype=torch.float) / max(frames / 100, 1e-3),
        ]
    ).float()


class StyleClassifier:
    """`predict(waveforms at 16 kHz) -> style names`."""

    def __init__(
        self,
        styles: list[str],
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        self.styles, self.weight, self.bias, self.mean, self.std = styles, weight, bias, mean, std
        self.report: dict = {}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, waveforms) -> list[str]:
        """16 kHz waveforms [S] (any iterable, read one at a time) -> their style names."""
        features = torch.stack([prosody_features(w) for w in waveforms])
        return [self.styles[i] for i in self.logits(features).argmax(-1).tolist()]

    def save(self, path: Path) -> None:
        torch.save(
            {
                "styles": self.styles,
                "weight": self.weight,
                "bias": self.bias,
                "mean": self.mean,
                "std": self.std,
                "report": self.report,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> StyleClassifier:
        state = load_tensors(path)
        classifier = cls(
            state["styles"], state["weight"], state["bias"], state["mean"], state["std"]
        )
        classifier.report = state["report"]
        return classifier


def random_crop(wav: torch.Tensor, seconds: float, generator: torch.Generator) -> torch.Tensor:
    """A `seconds` long slice of `wav` [S] at a random offset (the whole clip when shorter)."""
    size = int(seconds * SAMPLE_RATE)
    if len(wav) <= size:
        return wav
    start = int(torch.randint(0, len(wav) - size + 1, (1,), generator=generator))
    return wav[start : start + size]


def fit_style_classifier(
    waveforms, labels: list[str], l2: float = 1e-3, iterations: int = 200
) -> StyleClassifier:
    """Multinomial logistic regression on standardised prosody features of `waveforms` (an iterable, read
    one at a time), by L-BFGS."""
    styles = sorted(set(labels))
    x = torch.stack([prosody_features(w) for w in waveforms])
    y = torch.tensor([styles.index(s) for s in labels])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(len(styles), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(styles), requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return StyleClassifier(styles, weight.detach(), bias.detach(), mean, std)


def load_or_fit_style_classifier(
    corpus, crop_seconds: float = 2.0, max_hours: float = 10.0, seed: int = 0
) -> StyleClassifier | None:
    """Fitted on `crop_seconds` crops of at most `max_hours` of the styled train audio (a random subset,
    `fitting_subset`; the utterances and hours used in its artifact.json, `fitted_on`), a clip at a time,
    by the first call (saved under `<corpus>/artifacts/style_classifier/`); its accuracy on crops of the
    real test audio is in `.report` (the ceiling of the probe). None when the train records carry no
    `style` (LibriSpeech, most manifests): there is nothing to classify."""
    # whether there are styles, from the labels alone: a fitted classifier loads without the train audio
    if not any(r.style for r in read_labels(corpus, "train")):
        log.info(
            "no style labels in %s: no style classifier, no style metrics", corpus.manifest("train")
        )
        return None
    settings = {"crop_seconds": crop_seconds, "max_hours": max_hours, "seed": seed}
    inputs = manifest_fingerprints(corpus, "train", "test")
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> StyleClassifier:
        styled = {
            split: [r for r in read_split(corpus, split)[0] if r.style]
            for split in ("train", "test")
        }
        generator = torch.Generator().manual_seed(seed)
        train, record["fitted_on"] = fitting_subset(styled["train"], max_hours, seed)
        log.info("fitting the style classifier on %s", json.dumps(record["fitted_on"]))

        def crops(records: list) -> tuple:
            """(the records' crops, read one at a time; their style labels)"""
            audio = AudioOf(records, SAMPLE_RATE)
            return (random_crop(w, crop_seconds, generator) for w in audio), [
                r.style for r in records
            ]

        classifier = fit_style_classifier(*crops(train))
        test_clips, test_labels = crops(styled["test"])
        classifier.report = {
            **classification_accuracy(classifier.predict(test_clips), test_labels),
            "crop_seconds": crop_seconds,
            "test_clips": len(test_labels),
        }
        classifier.save(tmp / "style_classifier.pt")
        log.info("style classifier on real test crops: %s", json.dumps(classifier.report))
        return classifier  # artifact.json, written after fit, holds record["fitted_on"]

    def load(folder: Path) -> StyleClassifier:
        return StyleClassifier.load(folder / "style_classifier.pt")

    name = f"crop{crop_seconds:g}s"
    folder = artifact_dir(corpus.root, "style_classifier", name, settings, inputs)
    return fit_once(folder, fit, load, record)

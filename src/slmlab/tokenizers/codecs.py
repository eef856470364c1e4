"""Audio codecs for CSM: waveform <-> K parallel codebooks at 12.5 Hz, behind one interface.

    codec.encode(wav)   wav [S] at codec.sample_rate -> codes LongTensor [K, T], T = ceil(S / samples_per_frame)
    codec.decode(codes) codes [K, T] -> wav [T * samples_per_frame]
    codec.frame_rate, codec.num_codebooks, codec.cardinality, codec.sample_rate

- `codec_mimi`: moshi's Mimi (24 kHz, 12.5 Hz, up to 32 codebooks of 2048) with weights from a local file.
- `codec_builtin`: a residual vector quantiser fitted on the corpus by `slmlab-prepare`: 8 log-mel frames
  (10 ms each) stacked into one 12.5 Hz vector, normalised per mel bin, quantised by successive k-means
  codebooks of `cardinality` entries on the residuals, decoded by summing the chosen centroids, correcting
  the sum with a learned dequantiser (`Dequantiser`, convolutions over neighbouring frames trained with L1
  on the train mels), and vocoding the log-mel (Griffin-Lim, or a local HiFi-GAN; `tokenizers/mel.py`).
  With `semantic` settings, codebook 0 is a semantic codebook as Mimi's is (Mimi distils WavLM into it):
  k-means of speaker-normalised phonetic features (per-utterance normalised MFCC, or a speech encoder's
  layer; `units.make_features`) at 12.5 Hz, which the dequantiser reads beside the acoustic codebooks
  1..K-1. CSM's backbone predicts codebook 0 from the text, so a codebook 0 that names sounds rather than
  voices is one it can learn to read the text into.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from slmlab.artifacts import (
    artifact_dir,
    fit_once,
    load_json,
    load_tensors,
    manifest_fingerprints,
)
from slmlab.constants import CODEC_FRAME_RATE, CODEC_SAMPLE_RATE, SAMPLE_RATE
from slmlab.data.manifest import AudioOf, audio_path, fitting_subset, load_audio, read_split
from slmlab.tokenizers.mel import MelVocoder
from slmlab.tokenizers.unit_vocoder import ConvBlock
from slmlab.tokenizers.units import (
    assign_nearest,
    encoder_path,
    kmeans,
    make_features,
    sample_rows,
)

log = logging.getLogger(__name__)


class MimiCodec:
    """`tokenizer/speech=codec_mimi`: Mimi from `weights_path` (a moshi safetensors or torch file)."""

    sample_rate, frame_rate, cardinality = CODEC_SAMPLE_RATE, CODEC_FRAME_RATE, 2048

    def __init__(self, weights_path: str, num_codebooks: int = 32, corpus=None) -> None:
        """corpus: accepted for a uniform call with the fitted tokenizers, not used."""
        from moshi.models.loaders import get_mimi

        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"Mimi weights not found: {weights_path} (slmlab never downloads; pass a local file)"
            )
        if not 1 <= num_codebooks <= 32:
            raise ValueError(f"Mimi has 1 to 32 codebooks; got num_codebooks={num_codebooks}")
        self.weights_path, self.num_codebooks = str(weights_path), num_codebooks
        self.model = get_mimi(weights_path, num_codebooks=num_codebooks, device="cpu")
        self.samples_per_frame = int(self.sample_rate / self.frame_rate)
        self.source = Path(weights_path)

    def save(self, folder: str | Path) -> None:
        """`mimi.json`: the weights' path (pretrained weights are referenced, not copied), the codebooks used."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        settings = {"weights_path": self.weights_path, "num_codebooks": self.num_codebooks}
        (folder / "mimi.json").write_text(json.dumps(settings, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> MimiCodec:
        return cls(**load_json(Path(folder) / "mimi.json"))

    def fingerprint(self) -> str:
        stat = Path(self.weights_path).stat()
        return hashlib.sha1(
            f"mimi:{self.weights_path}:{stat.st_size}:{stat.st_mtime}:{self.num_codebooks}".encode()
        ).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.encode(wav.float()[None, None])[0]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None].long())[0, 0]


class Dequantiser(nn.Module):
    """Summed centroids [B, width, T] (normalised stacked log-mel frames at 12.5 Hz, width = 8 * n_mels) and,
    for a codec with a semantic codebook, its codes [B, T] -> the sum plus a correction from residual
    convolutions over the neighbouring frames, which see across the 80 ms frame edges that the codebooks
    quantise one by one (and the semantic code's embedding). The correction starts at zero: untrained, it
    returns the centroid sum."""

    def __init__(
        self, width: int, dim: int = 256, layers: int = 3, semantic_cardinality: int | None = None
    ) -> None:
        super().__init__()
        self.config = {"width": width, "dim": dim, "layers": layers}
        if semantic_cardinality is not None:
            self.config["semantic_cardinality"] = semantic_cardinality
            self.embed_semantic = nn.Embedding(semantic_cardinality, dim)
        self.project_in = nn.Conv1d(width, dim, 1)
        self.blocks = nn.ModuleList(ConvBlock(dim, 3, 0.0) for _ in range(layers))
        self.project_out = nn.Conv1d(dim, width, 1)
        nn.init.zeros_(self.project_out.weight)
        nn.init.zeros_(self.project_out.bias)

    def forward(self, summed: torch.Tensor, semantic: torch.Tensor | None = None) -> torch.Tensor:
        x, every_frame = self.project_in(summed), summed.new_ones(len(summed), 1, summed.shape[2])
        if semantic is not None:
            x = x + self.embed_semantic(semantic).transpose(1, 2)
        for block in self.blocks:
            x = block(x, every_frame)
        return summed + self.project_out(x)


class BuiltinCodec:
    """`tokenizer/speech=codec_builtin`: fitted state = per-bin mel mean/std, the residual (acoustic) codebooks
    [K_a, cardinality, 8 * n_mels], the dequantiser (None: the centroid sum is the mel) and, with a semantic
    codebook (`config["semantic"]`: `units.make_features` settings), its centroids [cardinality, D]: then
    codes are the semantic codebook followed by the K_a acoustic ones."""

    frame_rate = CODEC_FRAME_RATE

    def __init__(
        self,
        config: dict,
        codebooks: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        griffin_lim_iters: int = 32,
        vocoder_path: str | None = None,
        dequantiser: Dequantiser | None = None,
        semantic_centroids: torch.Tensor | None = None,
    ) -> None:
        self.config, self.codebooks, self.mean, self.std = config, codebooks, mean, std
        self.dequantiser = dequantiser.eval() if dequantiser is not None else None
        self.semantic_centroids = semantic_centroids
        self.semantic_features = (
            make_features(config["semantic"]) if config.get("semantic") else None
        )
        self.griffin_lim_iters, self.vocoder_path = griffin_lim_iters, vocoder_path
        self.source: Path | None = None  # the folder it was loaded from (or fitted into)
        self.sample_rate = config["sample_rate"]
        self.vocoder = MelVocoder(self.sample_rate, config["mel"], griffin_lim_iters, vocoder_path)
        self.mel_per_frame = int(self.sample_rate / self.frame_rate) // config["mel"]["hop_length"]
        self.samples_per_frame = self.mel_per_frame * config["mel"]["hop_length"]

    @property
    def num_codebooks(self) -> int:
        return len(self.codebooks) + (self.semantic_centroids is not None)

    @property
    def cardinality(self) -> int:
        return self.codebooks.shape[1]

    def fingerprint(self) -> str:
        digest = hashlib.sha1(json.dumps(self.config, sort_keys=True).encode())
        digest.update(self.codebooks.numpy().tobytes())
        if self.semantic_centroids is not None:
            digest.update(self.semantic_centroids.numpy().tobytes())
        weights = self.dequantiser.state_dict() if self.dequantiser is not None else {}
        for name in sorted(weights):
            digest.update(weights[name].numpy().tobytes())
        return digest.hexdigest()[:16]

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] -> normalised stacked log-mel frames [T, mel_per_frame * n_mels], T = ceil(S / samples_per_frame)."""
        count = -(-len(wav) // self.samples_per_frame)
        log_mel = self.vocoder.log_mel(
            F.pad(wav.float(), (0, count * self.samples_per_frame - len(wav)))
        )
        normalised = (log_mel.T - self.mean) / self.std  # [M, n_mels]
        return normalised.reshape(count, -1)

    def semantic_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] -> the semantic features [T, D] at 12.5 Hz (pairs of the 25 Hz features of the 16 kHz
        waveform averaged), T = ceil(S / samples_per_frame) as `frames`."""
        count = -(-len(wav) // self.samples_per_frame)
        padded = F.pad(wav.float(), (0, count * self.samples_per_frame - len(wav)))
        features = self.semantic_features(
            torchaudio.functional.resample(padded, self.sample_rate, SAMPLE_RATE)
        )  # [2 * count, D] at 25 Hz
        return features.reshape(count, 2, -1).mean(1)

    def quantise(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised stacked frames [T, width] -> acoustic codes [K_a, T], codebook by codebook on the residuals."""
        residual, codes = frames, []
        for codebook in self.codebooks:
            index = assign_nearest(residual, codebook)
            residual = residual - codebook[index]
            codes.append(index)
        return torch.stack(codes) if codes else torch.zeros(0, len(frames), dtype=torch.long)

    def semantic_codes(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] -> the semantic codebook's codes [T]."""
        return assign_nearest(self.semantic_frames(wav), self.semantic_centroids)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        acoustic = self.quantise(self.frames(wav))
        if self.semantic_centroids is None:
            return acoustic
        return torch.cat([self.semantic_codes(wav)[None], acoustic])

    @torch.no_grad()
    def decode_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [K', T] (the first K' <= K codebooks) -> log-mel [n_mels, T * mel_per_frame]."""
        semantic = None
        if self.semantic_centroids is not None:
            semantic, codes = codes[0], codes[1:]
        width, frames = self.codebooks.shape[2], codes.shape[1]
        summed = sum(
            (self.codebooks[k][codes[k].long()] for k in range(len(codes))),
            torch.zeros(frames, width),
        )
        if self.dequantiser is not None and frames:
            semantic = semantic[None].long() if semantic is not None else None
            summed = self.dequantiser(summed.T[None], semantic)[0].T
        return (summed.reshape(-1, self.mean.shape[0]) * self.std + self.mean).T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vocoder.mel_to_wave(self.decode_mel(codes))

    def save(self, folder: str | Path) -> None:
        """`codec.json` (fitted settings, the dequantiser's sizes), `codec.pt` (codebooks, mel statistics,
        the semantic centroids, the dequantiser's weights) and `vocoder.json` (how codes become a waveform:
        Griffin-Lim iterations or a HiFi-GAN folder, referenced by path)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dequantiser = self.dequantiser
        config = {**self.config, "dequantiser": dequantiser.config if dequantiser else None}
        (folder / "codec.json").write_text(json.dumps(config, indent=2))
        state = {"codebooks": self.codebooks, "mean": self.mean, "std": self.std}
        if self.semantic_centroids is not None:
            state["semantic_centroids"] = self.semantic_centroids
        if dequantiser is not None:
            state["dequantiser"] = dequantiser.state_dict()
        torch.save(state, folder / "codec.pt")
        vocoder = {"griffin_lim_iters": self.griffin_lim_iters, "vocoder_path": self.vocoder_path}
        (folder / "vocoder.json").write_text(json.dumps(vocoder, indent=2))

    @classmethod
    def load(cls, folder: str | Path, **vocoder) -> BuiltinCodec:
        """vocoder: griffin_lim_iters, vocoder_path; by default as saved (`vocoder.json`), else 32 and None."""
        folder = Path(folder)
        saved = load_json(folder / "vocoder.json") if (folder / "vocoder.json").is_file() else {}
        config, state = load_json(folder / "codec.json"), load_tensors(folder / "codec.pt")
        sizes, dequantiser = config.pop("dequantiser", None), None
        if sizes is not None:
            dequantiser = Dequantiser(**sizes)
            dequantiser.load_state_dict(state.pop("dequantiser"))
        codec = cls(config, **state, **{**saved, **vocoder}, dequantiser=dequantiser)
        codec.source = folder
        return codec


def _mel_statistics(codec: BuiltinCodec, waveforms) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Waveforms [S] -> (mean [n_mels], standard deviation [n_mels] (>= 1e-3) of their log-mel frames, from
    float64 sums; their count of codec frames)."""
    count, total, squares, frames = 0, 0.0, 0.0, 0
    for wav in waveforms:
        log_mel = codec.vocoder.log_mel(wav.float()).T.double()  # [M, n_mels]
        count, total = count + len(log_mel), total + log_mel.sum(0)
        squares = squares + log_mel.pow(2).sum(0)
        frames += -(-len(wav) // codec.samples_per_frame)
    mean = total / count
    std = ((squares - count * mean**2) / (count - 1)).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3), frames


def _crops(sequences: list[tuple[torch.Tensor, ...]], most: int, generator) -> list[torch.Tensor]:
    """Aligned sequences ([T_i, ...] each, e.g. stacked frames and semantic codes) -> the same random crop of
    each tuple, all as long as the shortest (at most `most` frames), stacked per position: [B, T, ...]."""
    length = min(most, *(len(s[0]) for s in sequences))
    starts = [
        int(torch.randint(len(s[0]) - length + 1, (1,), generator=generator)) for s in sequences
    ]
    return [
        torch.stack([s[i][start : start + length] for s, start in zip(sequences, starts)])
        for i in range(len(sequences[0]))
    ]


def fit_dequantiser(
    codec: BuiltinCodec,
    waveforms,
    dim: int = 256,
    layers: int = 3,
    steps: int = 600,
    batch_size: int = 16,
    crop_frames: int = 32,
    lr: float = 2e-3,
    codebook_dropout: float = 0.5,
    seed: int = 0,
) -> Dequantiser:
    """Train a `Dequantiser` for the codec's codebooks: the L1 between the corrected centroid sum and the
    normalised stacked frames, on random crops of `batch_size` waveforms [S] per step (each read when its
    batch is drawn), AdamW with a 5 % warm-up and cosine decay. A `codebook_dropout` share of the crops keep
    a random number k <= K of codebooks (quantiser dropout, as Mimi's, which always keeps the semantic
    codebook), so that the first k codebooks alone decode too."""
    generator = torch.Generator().manual_seed(seed)
    semantic = codec.semantic_centroids is not None
    # its initial weights from the seed alone, as the judge's (slmlab-prepare seeds nothing before a fit)
    torch.manual_seed(seed)
    model = Dequantiser(
        codec.codebooks.shape[2], dim, layers, len(codec.semantic_centroids) if semantic else None
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)),
    )
    acoustic = len(codec.codebooks)
    kept = torch.arange(acoustic)[None, :, None]  # [1, K_a, 1]
    started = time.perf_counter()
    for step in range(steps):
        picks = torch.randint(len(waveforms), (batch_size,), generator=generator).tolist()
        sequences = [
            (codec.frames(wav), codec.semantic_codes(wav)) if semantic else (codec.frames(wav),)
            for wav in (waveforms[i] for i in picks)
        ]
        target, *semantic_codes = _crops(sequences, crop_frames, generator)
        codes = torch.stack([codec.quantise(t) for t in target])  # [B, K_a, T]
        dropped = torch.rand(batch_size, generator=generator) < codebook_dropout
        count = torch.where(  # the semantic codebook is always kept, as in Mimi's quantiser dropout
            dropped,
            torch.randint(0 if semantic else 1, acoustic + 1, (batch_size,), generator=generator),
            acoustic,
        )
        centroids = torch.stack(
            [codec.codebooks[k][codes[:, k]] for k in range(acoustic)], 1
        )  # [B, K_a, T, width]
        summed = (centroids * (kept < count[:, None, None])[..., None]).sum(1)
        corrected = model(summed.transpose(1, 2), semantic_codes[0] if semantic else None)
        loss = (corrected - target.transpose(1, 2)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.info(
                "dequantiser step %d/%d: normalised L1 %.3f (%.0f s)",
                step,
                steps,
                loss.item(),
                time.perf_counter() - started,
            )
    return model.eval()


def fit_builtin_codec(
    waveforms,
    num_codebooks: int = 8,
    cardinality: int = 256,
    sample_rate: int = CODEC_SAMPLE_RATE,
    mel: dict | None = None,
    griffin_lim_iters: int = 32,
    vocoder_path: str | None = None,
    max_frames: int = 100_000,
    seed: int = 0,
    dequantiser: dict | None = None,
    semantic: dict | None = None,
) -> BuiltinCodec:
    """Residual k-means on the stacked log-mel frames of waveforms [S] at `sample_rate`, one in memory at a
    time, then (with `dequantiser` settings: `fit_dequantiser`'s) a dequantiser for its codebooks. With
    `semantic` settings (`units.make_features`'s: features mfcc | logmel | hubert, hubert_path, hubert_layer),
    codebook 0 is k-means of those features at 12.5 Hz and the other `num_codebooks - 1` are acoustic.
    `waveforms` is read more than once (a list, or `AudioOf` records; not a generator): the mel statistics
    (sums in float64), at most `max_frames` random frames (`sample_rows`), the dequantiser's batches."""
    if iter(waveforms) is waveforms:
        raise TypeError(
            "fit_builtin_codec reads its waveforms more than once: pass a list or AudioOf"
        )
    mel = {
        "n_fft": 1024,
        "win_length": 960,
        "hop_length": sample_rate // 100,
        "n_mels": 80,
        **(mel or {}),
    }
    config = {
        "num_codebooks": num_codebooks,
        "cardinality": cardinality,
        "sample_rate": sample_rate,
        "mel": mel,
        "seed": seed,
    }
    if semantic is not None:
        if num_codebooks < 2:
            raise ValueError(
                f"a semantic codebook needs num_codebooks >= 2 (it and an acoustic one); got {num_codebooks}"
            )
        config["semantic"] = {"hubert_path": None, "hubert_layer": 6, **semantic}
    analysis = BuiltinCodec(
        config,
        torch.zeros(0, cardinality, 1),
        torch.zeros(mel["n_mels"]),
        torch.ones(mel["n_mels"]),
    )
    analysis.mean, analysis.std, count = _mel_statistics(analysis, waveforms)
    semantic_centroids = None
    if semantic is not None:
        features = (analysis.semantic_frames(w) for w in waveforms)
        rows = sample_rows(features, count, max_frames, seed)
        semantic_centroids = kmeans(rows, cardinality, iters=15, seed=seed)
        log.info("semantic codebook: k-means of %s at 12.5 Hz", json.dumps(config["semantic"]))
    frames = sample_rows((analysis.frames(w) for w in waveforms), count, max_frames, seed)
    codebooks, residual = [], frames
    for k in range(num_codebooks - (semantic is not None)):
        codebook = kmeans(residual, cardinality, iters=15, seed=seed + k)
        residual = residual - codebook[assign_nearest(residual, codebook)]
        codebooks.append(codebook)
        log.info(
            "codebook %d: residual energy %.3f of the frames'",
            k,
            float(residual.pow(2).mean() / frames.pow(2).mean()),
        )
    codec = BuiltinCodec(
        config,
        torch.stack(codebooks),
        analysis.mean,
        analysis.std,
        griffin_lim_iters,
        vocoder_path,
        semantic_centroids=semantic_centroids,
    )
    if dequantiser is not None:
        codec.dequantiser = fit_dequantiser(codec, waveforms, **{"seed": seed, **dequantiser})
    return codec


def resynthesis_report(codec: BuiltinCodec, waveforms) -> dict:
    """Log-mel L1 (nats) between the source and its codes decoded with the first k codebooks, k = 1..K, and
    between the source and Griffin-Lim of its own mel re-analysed (the vocoder's ceiling), mean over clips."""
    by_k = {k: 0.0 for k in range(1, codec.num_codebooks + 1)}
    ceiling = 0.0
    for wav in waveforms:
        source = (
            codec.frames(wav).reshape(-1, codec.mean.shape[0]).T * codec.std[:, None]
            + codec.mean[:, None]
        )
        codes = codec.encode(wav)
        for k in by_k:
            by_k[k] += float((codec.decode_mel(codes[:k]) - source).abs().mean()) / len(waveforms)
        regenerated = codec.vocoder.log_mel(codec.vocoder.mel_to_wave(source))
        ceiling += float((regenerated - source[:, : regenerated.shape[1]]).abs().mean()) / len(
            waveforms
        )
    decoded = codec.vocoder.log_mel(codec.decode(codes))
    return {
        "clips": len(waveforms),
        "mel_l1_by_codebooks": by_k,
        "mel_l1_griffin_lim_of_source": ceiling,
        "mel_l1_decoded_audio_last_clip": float(
            (decoded - source[:, : decoded.shape[1]]).abs().mean()
        ),
    }


def load_or_fit_builtin_codec(
    corpus,
    num_codebooks: int = 8,
    cardinality: int = 256,
    sample_rate: int = CODEC_SAMPLE_RATE,
    mel: dict | None = None,
    griffin_lim_iters: int = 32,
    vocoder_path: str | None = None,
    max_hours: float = 10.0,
    max_frames: int = 100_000,
    seed: int = 0,
    dequantiser: dict | None = None,
    semantic: dict | None = None,
    speech_encoder: dict | None = None,
) -> BuiltinCodec:
    """`tokenizer/speech=codec_builtin`: fit on at most `max_frames` random frames (and the dequantiser, given
    its settings, on its batches) of at most `max_hours` of the corpus's train audio (a random subset,
    `fitting_subset`), streamed, once (saved under
    `<corpus>/artifacts/codec/`, with `resynthesis.json` on 16 test clips and the utterances and hours
    used in its artifact.json, `fitted_on`); later calls load it. A semantic codebook of features=hubert
    without `hubert_path` reads the corpus's own speech encoder (`slmlab.pretrain.speech_encoder`,
    `speech_encoder` its settings), fitted first if need be, as Mimi's codebook 0 is distilled from WavLM."""
    mel = dict(mel) if mel is not None else None  # a Hydra DictConfig becomes JSON-able
    semantic = dict(semantic) if semantic is not None else None
    if semantic is not None and semantic["features"] == "hubert":
        semantic["hubert_path"] = encoder_path(
            corpus, "hubert", semantic.get("hubert_path"), speech_encoder
        )
    settings = {
        "num_codebooks": num_codebooks,
        "cardinality": cardinality,
        "sample_rate": sample_rate,
        "mel": mel,
        "max_hours": max_hours,
        "max_frames": max_frames,
        "seed": seed,
    }
    if dequantiser is not None:  # a codec without one keeps the key it had before dequantisers
        settings["dequantiser"] = dict(dequantiser)
    if semantic is not None:  # as for the dequantiser, before semantic codebooks
        settings["semantic"] = semantic
    inputs = manifest_fingerprints(corpus, "train", "test")
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> BuiltinCodec:
        records, record["fitted_on"] = fitting_subset(
            read_split(corpus, "train")[0], max_hours, seed
        )
        log.info(
            "fitting the built-in codec (%d x %d) on %s",
            num_codebooks,
            cardinality,
            json.dumps(record["fitted_on"]),
        )
        codec = fit_builtin_codec(
            AudioOf(records, sample_rate, audio_path),
            num_codebooks,
            cardinality,
            sample_rate,
            mel,
            griffin_lim_iters,
            vocoder_path,
            max_frames,
            seed,
            settings.get("dequantiser"),
            settings.get("semantic"),
        )
        test, _ = read_split(corpus, "test")
        clips = [load_audio(audio_path(r), sample_rate) for r in test[:16]]
        report = resynthesis_report(codec, clips)
        log.info("built-in codec resynthesis on test: %s", json.dumps(report))
        codec.save(tmp)
        (tmp / "resynthesis.json").write_text(json.dumps(report, indent=2))
        return codec  # artifact.json, written after fit, holds record["fitted_on"]

    def load(folder: Path) -> BuiltinCodec:
        return BuiltinCodec.load(
            folder, griffin_lim_iters=griffin_lim_iters, vocoder_path=vocoder_path
        )

    name = f"{num_codebooks}x{cardinality}"
    folder = artifact_dir(corpus.root, "codec", name, settings, inputs)
    codec = fit_once(folder, fit, load, record)
    codec.source = folder
    return codec

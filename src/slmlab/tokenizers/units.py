"""Speech tokens for Spirit LM: phonetic units (25 Hz), pitch (12.5 Hz) and style (1 Hz), fitted on a corpus.

    tok = load_or_fit_speech_tokenizer(corpus, features="mfcc", n_units=500)
    units = tok.encode(wav)                      # LongTensor [N] at 25 Hz (repeats merged when dedup=True)
    tok.units_to_string(units)                   # "[Hu12][Hu7]..."; tok.parse("[Hu12][Pi3]") reverses it
    streams = tok.encode_streams(wav)            # frame-level {"units": [S/640], "pitch": [S/1280],
                                                 #              "style": [ceil(S/16000)]}
    tok.merge(streams, start=0.5, end=1.2)       # [("St", 81), ("Hu", 78), ("Pi", 13), ...] in time order

Units: frame features -> nearest of `n_units` k-means centroids. Features are MFCC (+deltas, HuBERT's
first-iteration targets) or log-mel, per-utterance normalised (the embedded default), or one layer of
a speech encoder from a local folder (a transformers HuBERT or FastConformer; by default the corpus's own
speech encoder, `slmlab.pretrain.speech_encoder`). Pitch: F0 from normalised autocorrelation,
log-F0 quantised into `n_pitch - 1` corpus quantile bins plus one "unvoiced" token. Style: per-second
prosody statistics (log-F0 mean/spread, voicing, energy, unit rate), k-means into `n_styles`.
The reference uses mHuBERT + k-means 501, a pitch VQ-VAE and a speech-property encoder; the sizes
and rates match it, the feature extractors are the small, corpus-fitted stand-ins named above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio

from slmlab.artifacts import (
    artifact_dir,
    fit_once,
    load_json,
    load_tensors,
    manifest_fingerprints,
)
from slmlab.constants import SAMPLE_RATE, TOKEN_RATES
from slmlab.data.manifest import AudioOf, fitting_subset, read_split

log = logging.getLogger(__name__)

KIND_OF = {"style": "St", "units": "Hu", "pitch": "Pi"}  # stream name -> token kind
MERGE_ORDER = {
    "St": 0,
    "Hu": 1,
    "Pi": 2,
}  # at equal times, as the reference writes [St81][Hu78][Pi13]
TOKEN_PATTERN = re.compile(r"\[(Hu|Pi|St)(\d+)\]")
HOP_100HZ = SAMPLE_RATE // 100


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """x [N, D] -> centroids [k, D]: k-means++ seeding then Lloyd iterations (replaces sklearn's KMeans,
    which fairseq's `learn_kmeans.py` uses for HuBERT units)."""
    generator = torch.Generator().manual_seed(seed)
    k = min(k, len(x))
    squared_norms = x.pow(2).sum(1)

    def squared_distances(
        point: torch.Tensor,
    ) -> torch.Tensor:  # to one point, [N], without an [N, D] temporary
        return (squared_norms - 2 * (x @ point) + point.pow(2).sum()).clamp_min(0)

    first = int(torch.randint(len(x), (1,), generator=generator))
    centroids, nearest = [x[first]], squared_distances(x[first])
    for _ in range(k - 1):
        pick = int(torch.multinomial(nearest.clamp_min(1e-12), 1, generator=generator))
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, squared_distances(x[pick]))
    centroids = torch.stack(centroids)
    for _ in range(iters):
        assign = assign_nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


def sample_rows(chunks, total: int, k: int, seed: int = 0) -> torch.Tensor:
    """The rows of `chunks` ([n_i, D] tensors, `total` rows in all, made one at a time) -> [min(k, total), D]:
    all of them in order when total <= k, else `torch.cat(chunks)[torch.randperm(total)[:k]]` (seeded),
    gathered chunk by chunk without ever holding the concatenation."""
    if total <= k:
        return torch.cat(list(chunks))
    picks = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]
    order = picks.argsort()
    sorted_picks, rows, start = picks[order], None, 0
    for chunk in chunks:
        lo, hi = torch.searchsorted(
            sorted_picks, torch.tensor([start, start + len(chunk)])
        ).tolist()
        if rows is None:
            rows = chunk.new_empty(k, chunk.shape[1])
        rows[order[lo:hi]] = chunk[sorted_picks[lo:hi] - start]
        start += len(chunk)
    if start != total:
        raise ValueError(f"expected {total} rows, the chunks held {start}")
    return rows


def assign_nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """x [N, D], centroids [k, D] -> index of the nearest centroid [N]."""
    return (
        torch.cat([torch.cdist(part, centroids).argmin(1) for part in x.split(chunk)])
        if len(x)
        else torch.zeros(0, dtype=torch.long)
    )


def dedup(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values [T] -> (values with runs merged [N], run lengths [N])."""
    return torch.unique_consecutive(values, return_counts=True)


# -- frame features ---------------------------------------------------------------------------------
class SpectralFeatures:
    """`features=mfcc` (13 MFCC + deltas + delta-deltas) or `logmel` (40 bins), 10 ms frames averaged in
    fours to 25 Hz, each utterance normalised to zero mean and unit variance per dimension."""

    def __init__(self, kind: str = "mfcc") -> None:
        melkwargs = {"n_fft": 512, "win_length": 400, "hop_length": HOP_100HZ, "n_mels": 40}
        if kind == "mfcc":
            self.transform = torchaudio.transforms.MFCC(SAMPLE_RATE, n_mfcc=13, melkwargs=melkwargs)
        elif kind == "logmel":
            self.transform = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, **melkwargs)
        else:
            raise ValueError(f"unknown spectral features {kind!r}; valid: mfcc, logmel")
        self.kind = kind

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] at 16 kHz -> [T, D] at 25 Hz, T = S // 640."""
        frames = self.transform(wav)
        if self.kind == "mfcc":
            delta = torchaudio.functional.compute_deltas(frames)
            frames = torch.cat([frames, delta, torchaudio.functional.compute_deltas(delta)])
        else:
            frames = frames.clamp_min(1e-6).log()
        frames = _pool_to_25hz(frames.T, len(wav) // 640, HOP_100HZ)
        return (
            (frames - frames.mean(0)) / frames.std(0).clamp_min(1e-5) if len(frames) > 1 else frames
        )


class EncoderLayerFeatures:
    """`features=hubert`: hidden states of `layer` of a speech encoder (layer 0: its input embeddings), as
    Spirit LM reads mHuBERT's layer 11: a HuBERT or wav2vec2 on raw waveforms (50 Hz frames, averaged in
    pairs to 25 Hz), a FastConformer CTC model on log-mel (25 Hz states: the corpus's own speech encoder,
    `slmlab.pretrain.speech_encoder`), both local transformers folders, or a released mHuBERT `.pt` (s3prl's
    converted fairseq layout, read by `mhubert.read_mhubert`; 25 Hz already)."""

    def __init__(self, path: str, layer: int = 6) -> None:
        from slmlab.models.pretrained import load_audio_encoder
        from slmlab.tokenizers.frontends import build_feature_extractor

        if Path(path).is_file():
            from slmlab.tokenizers.mhubert import read_mhubert

            self.model = read_mhubert(path)
        elif Path(path).is_dir():
            self.model = load_audio_encoder(path).eval()
        else:
            raise FileNotFoundError(
                f"speech encoder folder or mHuBERT file not found: {path} (slmlab never downloads; "
                "pass a local path)"
            )
        config = self.model.config
        self.log_mel = config.model_type == "parakeet_encoder"
        # input samples per frame: 10 ms mel hops x the subsampling, or the convolutions' strides
        self.hop = (
            160 * config.subsampling_factor if self.log_mel else math.prod(config.conv_stride)
        )
        if 640 % self.hop:
            raise ValueError(
                f"{path}: frames every {self.hop} samples do not pool to 25 Hz (640 samples)"
            )
        if not 0 <= layer <= config.num_hidden_layers:
            raise ValueError(f"{path}: layer {layer} out of range 0..{config.num_hidden_layers}")
        self.extractor = build_feature_extractor(config, path)  # the folder's own, else the default
        self.layer = layer

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        from slmlab.tokenizers.frontends import extract_features

        inputs, _ = extract_features(self.extractor, [wav], SAMPLE_RATE)
        if self.log_mel:
            inputs = inputs.transpose(1, 2)  # [1, F, n_mels], as the FastConformer reads it
        hidden = self.model(inputs, output_hidden_states=True).hidden_states[self.layer][0]
        return _pool_to_25hz(hidden, len(wav) // 640, self.hop)


def _pool_to_25hz(frames: torch.Tensor, count: int, hop: int) -> torch.Tensor:
    """frames [T, D] every `hop` samples -> [count, D], each the mean of the frames inside its 640 samples."""
    group = 640 // hop
    frames = frames[: count * group]
    if len(frames) < count * group:
        frames = torch.cat([frames, frames[-1:].expand(count * group - len(frames), -1)])
    return frames.reshape(count, group, -1).mean(1)


def f0_contour(
    wav: torch.Tensor, fmin: float = 60.0, fmax: float = 400.0, threshold: float = 0.45
) -> torch.Tensor:
    """wav [S] at 16 kHz -> F0 in Hz per 10 ms frame [S // 160], 0 where unvoiced. The lag maximising the
    normalised autocorrelation of 40 ms windows (replaces the YAAPT/pyworld trackers of the reference)."""
    window = 640
    padded = F.pad(wav, (window // 2, window // 2))
    frames = padded.unfold(0, window, HOP_100HZ)[: len(wav) // HOP_100HZ]
    frames = frames - frames.mean(1, keepdim=True)
    spectrum = torch.fft.rfft(frames, n=2 * window)
    autocorr = torch.fft.irfft(spectrum.abs() ** 2)[:, :window]
    lags = torch.arange(int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin) + 1)
    energy = autocorr[:, :1].clamp_min(1e-8)
    normalised = (
        autocorr[:, lags] / energy * window / (window - lags)
    )  # unbiased: longer lags overlap less
    peak, index = normalised.max(1)
    loud = energy.squeeze(1) > 1e-3 * energy.max()
    return torch.where(
        (peak > threshold) & loud, SAMPLE_RATE / lags[index].float(), torch.zeros(())
    )


def merge_streams(
    streams: dict[str, torch.Tensor],
    start: float,
    end: float | None,
    order: dict[str, int],
    merged_kinds,
) -> list[tuple[str, int]]:
    """Frame-level streams -> [(kind, value)] whose time lies in [start, end) s, in time order and, at
    equal times, in `order`; repeats of a value merged in the kinds of `merged_kinds`."""
    events = []
    for name, values in streams.items():
        kind = KIND_OF[name]
        times = torch.arange(len(values)) / TOKEN_RATES[kind]
        inside = (times >= start) & (times < (end if end is not None else float("inf")))
        values, times = values[inside], times[inside]
        if kind in merged_kinds and len(values):
            keep = torch.ones(len(values), dtype=torch.bool)
            keep[1:] = values[1:] != values[:-1]
            values, times = values[keep], times[keep]
        events += [(float(t), order[kind], kind, int(v)) for t, v in zip(times, values)]
    return [(kind, value) for _, _, kind, value in sorted(events)]


class SpeechTokenizer:
    """Fitted state: unit centroids, pitch bin edges (log-F0), style centroids and feature statistics.
    With `quantizer_path` in its config (the Spirit LM release's linear quantizer), units come from that
    classifier instead of the nearest centroid, and `unit_centroids` is empty."""

    def __init__(
        self,
        config: dict,
        unit_centroids: torch.Tensor,
        pitch_edges: torch.Tensor,
        style_centroids: torch.Tensor,
        style_stats: torch.Tensor,
        features=None,
        quantizer=None,
    ) -> None:
        self.config = config
        self.unit_centroids, self.pitch_edges = unit_centroids, pitch_edges
        self.style_centroids, self.style_stats = style_centroids, style_stats
        self.features = features or make_features(config)
        self.quantizer = quantizer or make_quantizer(config)
        self.decoder = (
            None  # a fitted `UnitVocoder` (tokenizers/unit_vocoder.py), attached by the loader
        )
        self.source: Path | None = None  # the folder it was loaded from (or fitted into)

    # sizes
    @property
    def n_units(self) -> int:
        return self.quantizer.vocab_size if self.quantizer is not None else len(self.unit_centroids)

    def assign_units(self, features: torch.Tensor) -> torch.Tensor:
        """features [T, D] at 25 Hz -> units [T]: the release's quantizer, or the nearest centroid."""
        if self.quantizer is not None:
            return self.quantizer(features)
        return assign_nearest(features, self.unit_centroids)

    @property
    def sizes(self) -> dict[str, int]:
        """Token kind -> number of values: {"Hu": n_units, "Pi": n_pitch, "St": n_styles}."""
        return {
            "Hu": self.n_units,
            "Pi": len(self.pitch_edges) + 2,
            "St": len(self.style_centroids),
        }

    @property
    def dedup(self) -> bool:
        return self.config["dedup"]

    def fingerprint(self) -> str:
        state = (
            json.dumps(self.config, sort_keys=True).encode()
            + self.unit_centroids.numpy().tobytes()
            + self.pitch_edges.numpy().tobytes()
            + self.style_centroids.numpy().tobytes()
            + b"".join(
                tensor.numpy().tobytes()
                for tensor in (self.quantizer.state_dict().values() if self.quantizer else ())
            )
        )
        return hashlib.sha1(state).hexdigest()[:16]

    # encoding
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [S] at 16 kHz -> units [N] at 25 Hz (repeats merged when the tokenizer deduplicates)."""
        units = self.encode_streams(wav, ("units",))["units"]
        return dedup(units)[0] if self.dedup else units

    def encode_streams(
        self, wav: torch.Tensor, streams=("units", "pitch", "style")
    ) -> dict[str, torch.Tensor]:
        """wav [S] at 16 kHz -> frame-level LongTensors: units [S/640] (25 Hz), pitch [S/1280] (12.5 Hz),
        style [ceil(S/16000)] (1 Hz); nothing deduplicated (cutting at word times needs the frames)."""
        out = {}
        if "units" in streams or "style" in streams:
            units = self.assign_units(self.features(wav))
            out["units"] = units
        if "pitch" in streams or "style" in streams:
            f0 = f0_contour(wav)
        if "pitch" in streams:
            out["pitch"] = self._pitch_tokens(f0)
        if "style" in streams:
            out["style"] = assign_nearest(
                (style_features(wav, f0, units) - self.style_stats[0]) / self.style_stats[1],
                self.style_centroids,
            )
        return {name: out[name] for name in streams}

    def _pitch_tokens(self, f0: torch.Tensor) -> torch.Tensor:
        """F0 per 10 ms -> 12.5 Hz tokens: 0 = unvoiced (under half the frames voiced), else 1 + bin of the
        median voiced log-F0."""
        count = len(f0) // 8
        blocks = f0[: count * 8].reshape(count, 8)
        voiced = blocks > 0
        log_f0 = torch.where(
            voiced, blocks.clamp_min(1.0).log(), torch.full_like(blocks, float("nan"))
        )
        median = log_f0.nanmedian(1).values
        tokens = 1 + torch.bucketize(median.nan_to_num(0.0), self.pitch_edges)
        return torch.where(voiced.sum(1) >= 4, tokens, torch.zeros_like(tokens))

    def merge(
        self, streams: dict[str, torch.Tensor], start: float = 0.0, end: float | None = None
    ) -> list[tuple[str, int]]:
        """Tokens of the given streams whose time lies in [start, end) s, each stream deduplicated when
        configured (repeats of a unit, pitch or style value merged), merged in time order."""
        return merge_streams(
            streams, start, end, MERGE_ORDER, set(KIND_OF.values()) if self.dedup else ()
        )

    # strings
    @staticmethod
    def to_string(tokens: list[tuple[str, int]]) -> str:
        return "".join(f"[{kind}{value}]" for kind, value in tokens)

    def units_to_string(self, units: torch.Tensor) -> str:
        return self.to_string([("Hu", int(u)) for u in units])

    def parse(self, text: str) -> list[tuple[str, int]]:
        """ "[St81][Hu78][Pi13]" -> [("St", 81), ("Hu", 78), ("Pi", 13)]; anything else is an error."""
        tokens, position = [], 0
        for match in TOKEN_PATTERN.finditer(text):
            if match.start() != position:
                raise ValueError(
                    f"not a speech token at character {position}: {text[position : match.start()]!r}"
                )
            kind, value = match.group(1), int(match.group(2))
            if value >= self.sizes[kind]:
                raise ValueError(
                    f"[{kind}{value}] out of range: this tokenizer has {self.sizes[kind]} {kind} values"
                )
            tokens.append((kind, value))
            position = match.end()
        if position != len(text):
            raise ValueError(f"not a speech token at character {position}: {text[position:]!r}")
        return tokens

    # decoding
    def decode(self, tokens: list[tuple[str, int]] | str) -> torch.Tensor:
        """Speech tokens (or their string) -> waveform [S] at 16 kHz through the fitted unit vocoder."""
        if self.decoder is None:
            raise RuntimeError(
                "this speech tokenizer has no fitted decoder (set `decoder` in tokenizer/speech)"
            )
        return self.decoder.synthesise(self.parse(tokens) if isinstance(tokens, str) else tokens)

    # persistence
    def save(self, folder: str | Path) -> None:
        """The fitted state into `folder`; the unit vocoder, when attached, into `folder/decoder/`; the
        speech encoder it reads features from into `folder/hubert/` (a transformers folder) and the
        release's quantizer into `folder/quantizer.pt`, so that the folder (a run's tokenizers/speech/)
        stands alone. The config keeps the paths it was made with (and so its fingerprint)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "speech_tokenizer.json").write_text(json.dumps(self.config, indent=2))
        torch.save(
            {
                "unit_centroids": self.unit_centroids,
                "pitch_edges": self.pitch_edges,
                "style_centroids": self.style_centroids,
                "style_stats": self.style_stats,
            },
            folder / "speech_tokenizer.pt",
        )
        if self.decoder is not None:
            self.decoder.save(folder / "decoder")
        if isinstance(self.features, EncoderLayerFeatures):
            self.features.model.save_pretrained(folder / "hubert")
            self.features.extractor.save_pretrained(folder / "hubert")
        if self.quantizer is not None:
            self.quantizer.save(folder / "quantizer.pt")

    @classmethod
    def load(cls, folder: str | Path) -> SpeechTokenizer:
        from slmlab.tokenizers.code_hifigan import CodeHiFiGANVocoder
        from slmlab.tokenizers.unit_vocoder import UnitVocoder

        folder = Path(folder)
        config = load_json(folder / "speech_tokenizer.json")
        saved = {}
        if (folder / "hubert").is_dir():
            saved["features"] = EncoderLayerFeatures(str(folder / "hubert"), config["hubert_layer"])
        if (folder / "quantizer.pt").is_file():
            from slmlab.tokenizers.mhubert import read_linear_quantizer

            saved["quantizer"] = read_linear_quantizer(folder / "quantizer.pt")
        tokenizer = cls(config, **load_tensors(folder / "speech_tokenizer.pt"), **saved)
        if (folder / "decoder" / "generator.pt").is_file():  # the release's CodeHiFiGAN
            tokenizer.decoder = CodeHiFiGANVocoder.load(folder / "decoder")
        elif (folder / "decoder").is_dir():
            tokenizer.decoder = UnitVocoder.load(folder / "decoder")
        tokenizer.source = folder
        return tokenizer


def encoder_path(
    corpus, features: str, hubert_path: str | None, speech_encoder: dict | None
) -> str | None:
    """The speech encoder folder that features=hubert read: `hubert_path` when given, else the corpus's own
    (`slmlab.pretrain.speech_encoder`, `speech_encoder` its settings), fitted first if need be. Other
    features read none: `hubert_path` as given."""
    if features != "hubert" or hubert_path:
        return hubert_path
    from slmlab.pretrain.speech_encoder import load_or_fit_speech_encoder

    return str(load_or_fit_speech_encoder(corpus, **(speech_encoder or {})))


def make_features(config: dict):
    if config["features"] == "hubert":
        if not config.get("hubert_path"):
            raise ValueError(
                "tokenizer/speech features=hubert needs hubert_path (a local transformers folder)"
            )
        return EncoderLayerFeatures(config["hubert_path"], config["hubert_layer"])
    return SpectralFeatures(config["features"])


def make_quantizer(config: dict):
    """The release's linear unit quantizer when the config names one (`quantizer_path`), else None."""
    if not config.get("quantizer_path"):
        return None
    from slmlab.tokenizers.mhubert import read_linear_quantizer

    return read_linear_quantizer(config["quantizer_path"])


def style_features(wav: torch.Tensor, f0: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """One row per started second [ceil(S/16000), 6]: voiced log-F0 mean and spread, voiced fraction,
    frame energy mean and spread (dB), and unit changes per second (a speaking-rate proxy)."""
    seconds = max(1, -(-len(wav) // SAMPLE_RATE))
    energy_db = (
        10
        * wav[: len(f0) * HOP_100HZ]
        .reshape(len(f0), HOP_100HZ)
        .pow(2)
        .mean(1)
        .clamp_min(1e-8)
        .log10()
    )
    changes = torch.cat([torch.zeros(1), (units[1:] != units[:-1]).float()])
    rows = []
    for s in range(seconds):
        pitch, loud = f0[s * 100 : (s + 1) * 100], energy_db[s * 100 : (s + 1) * 100]
        voiced = pitch[pitch > 0].log()
        rows.append(
            [
                voiced.mean() if len(voiced) else 0.0,
                voiced.std() if len(voiced) > 1 else 0.0,
                (pitch > 0).float().mean() if len(pitch) else 0.0,
                loud.mean() if len(loud) else -80.0,
                loud.std() if len(loud) > 1 else 0.0,
                changes[s * 25 : (s + 1) * 25].mean() * 25
                if len(changes[s * 25 : (s + 1) * 25])
                else 0.0,
            ]
        )
    return torch.tensor([[float(v) for v in row] for row in rows])


def _voiced_log_f0(waveforms) -> tuple[torch.Tensor, int]:
    """16 kHz waveforms [S] -> (log-F0 of their voiced 10 ms frames [V], their count of 25 Hz frames)."""
    voiced, frames = [], 0
    for wav in waveforms:
        f0 = f0_contour(wav)
        voiced.append(f0[f0 > 0].log())
        frames += len(wav) // 640  # as the features: one every 640 samples
    return torch.cat(voiced), frames


def fit_speech_tokenizer(
    waveforms,
    features: str = "mfcc",
    n_units: int = 500,
    n_pitch: int = 64,
    n_styles: int = 100,
    dedup: bool = True,
    hubert_path: str | None = None,
    hubert_layer: int = 6,
    quantizer_path: str | None = None,
    max_frames: int = 200_000,
    seed: int = 0,
) -> SpeechTokenizer:
    """Fit units, pitch bins and styles on 16 kHz waveforms [S], one in memory at a time. `waveforms` is
    read three times (a list, or `AudioOf` records; not a generator): voiced log-F0 for the pitch bins and
    the frame count; the k-means pool (at most `max_frames` random frames, `sample_rows`); the style rows
    with the fitted units. Features are computed twice (HuBERT's too): memory for time. With
    `quantizer_path` (the release's unit classifier) no unit is fitted: the k-means pass is skipped."""
    if iter(waveforms) is waveforms:
        raise TypeError(
            "fit_speech_tokenizer reads its waveforms three times: pass a list or AudioOf"
        )
    config = {
        "features": features,
        "n_units": n_units,
        "n_pitch": n_pitch,
        "n_styles": n_styles,
        "dedup": dedup,
        "hubert_path": hubert_path,
        "hubert_layer": hubert_layer,
        "seed": seed,
        # only when set, so that the k-means tokenizers' fingerprints (and caches) stay as they were
        **({"quantizer_path": quantizer_path} if quantizer_path else {}),
    }
    extractor, quantizer = make_features(config), make_quantizer(config)
    if quantizer is not None and quantizer.vocab_size != n_units:
        raise ValueError(
            f"{quantizer_path}: the quantizer has {quantizer.vocab_size} units, the config says "
            f"n_units={n_units}"
        )
    voiced, frames = _voiced_log_f0(waveforms)
    if quantizer is None:
        pool = sample_rows((extractor(w) for w in waveforms), frames, max_frames, seed)
        unit_centroids = kmeans(pool, n_units, seed=seed)
        del pool
    else:
        unit_centroids = torch.zeros(0)
    pitch_edges = (
        torch.quantile(voiced, torch.linspace(0, 1, n_pitch)[1:-1])
        if len(voiced)
        else torch.zeros(n_pitch - 2)
    )
    tokenizer = SpeechTokenizer(  # its styles are fitted below, with the units it assigns
        config, unit_centroids, pitch_edges, None, None, extractor, quantizer
    )
    rows = torch.cat(
        [style_features(w, f0_contour(w), tokenizer.assign_units(extractor(w))) for w in waveforms]
    )
    tokenizer.style_stats = torch.stack([rows.mean(0), rows.std(0).clamp_min(1e-5)])
    tokenizer.style_centroids = kmeans(
        (rows - tokenizer.style_stats[0]) / tokenizer.style_stats[1], n_styles, seed=seed
    )
    return tokenizer


def load_or_fit_speech_tokenizer(
    corpus,
    features: str = "mfcc",
    n_units: int = 500,
    n_pitch: int = 64,
    n_styles: int = 100,
    dedup: bool = True,
    hubert_path: str | None = None,
    hubert_layer: int = 6,
    quantizer_path: str | None = None,
    decoder: dict | None = None,
    code_hifigan_path: str | None = None,
    code_hifigan_speaker: int = 2,
    max_hours: float = 10.0,
    max_frames: int = 200_000,
    seed: int = 0,
    speech_encoder: dict | None = None,
) -> SpeechTokenizer:
    """`tokenizer/speech=units_*`: fit on at most `max_hours` of the corpus's train audio (a random subset,
    `fitting_subset`), streamed, once (first `slmlab-prepare` or training run), saved under
    `<corpus>/artifacts/units/` (`artifacts.py`; the utterances and hours used in its artifact.json,
    `fitted_on`); with `decoder` settings, the unit vocoder too. features=hubert without `hubert_path`:
    the corpus's own speech encoder (`slmlab.pretrain.speech_encoder`, `speech_encoder` its settings),
    fitted first if need be, as Spirit LM takes its units from HuBERT. `code_hifigan_path` (the release's
    hifigan_spiritlm_* folder) voices the units with the release's CodeHiFiGAN instead of a fitted vocoder."""
    from slmlab.tokenizers.unit_vocoder import load_or_fit_unit_vocoder

    hubert_path = encoder_path(corpus, features, hubert_path, speech_encoder)
    settings = {
        "features": features,
        "n_units": n_units,
        "n_pitch": n_pitch,
        "n_styles": n_styles,
        "dedup": dedup,
        "hubert_path": hubert_path,
        "hubert_layer": hubert_layer,
        "max_hours": max_hours,
        "max_frames": max_frames,
        "seed": seed,
        **({"quantizer_path": quantizer_path} if quantizer_path else {}),
    }
    inputs = manifest_fingerprints(corpus, "train")
    record = {"settings": settings, "inputs": inputs}

    def fit(tmp: Path) -> SpeechTokenizer:
        records, record["fitted_on"] = fitting_subset(
            read_split(corpus, "train")[0], max_hours, seed
        )
        log.info(
            "fitting speech tokens (%s, %d units) on %s",
            features,
            n_units,
            json.dumps(record["fitted_on"]),
        )
        fit_settings = {k: v for k, v in settings.items() if k != "max_hours"}
        tokenizer = fit_speech_tokenizer(AudioOf(records, SAMPLE_RATE), **fit_settings)
        tokenizer.save(tmp)
        return tokenizer  # artifact.json, written after fit, holds record["fitted_on"]

    folder = artifact_dir(corpus.root, "units", f"{features}{n_units}", settings, inputs)
    tokenizer = fit_once(folder, fit, SpeechTokenizer.load, record)
    tokenizer.source = folder
    if code_hifigan_path:
        from slmlab.tokenizers.code_hifigan import CodeHiFiGANVocoder

        tokenizer.decoder = CodeHiFiGANVocoder.load(
            code_hifigan_path, speaker=code_hifigan_speaker, dedup=dedup
        )
    elif decoder is not None:
        tokenizer.decoder = load_or_fit_unit_vocoder(corpus, tokenizer, **{"seed": seed, **decoder})
    return tokenizer

"""Spirit LM's released speech decoders: unit-input CodeHiFiGAN generators, loaded from their own files.

    vocoder = CodeHiFiGANVocoder.load("checkpoints/speech_tokenizer/hifigan_spiritlm_base")
    wav = vocoder.synthesise([("Hu", 78), ("Hu", 42), ("Hu", 81)])    # [S] at 16 kHz, in [-1, 1]

A release folder (`hifigan_spiritlm_base/`, `hifigan_spiritlm_expressive_w2v2/`) holds `generator.pt`
({"generator": state dict}) and `config.json`. The generator embeds, per 25 Hz frame (code_hop_size 640
samples at 16 kHz), the unit and, for Expressive, the pitch (f0) token and the style token current at that
frame; a speaker id (and, for Base, a style id) is embedded once and repeated over the frames. The
embeddings are concatenated channel-wise and a HiFi-GAN (weight-normed transposed convolutions, each
followed by multi-receptive-field ResBlocks) upsamples them by prod(upsample_rates) samples per frame. A
duration predictor turns deduplicated units into frame counts.

Written from reading facebookresearch/spiritlm's `speech_tokenizer/hifigan/hifigan_vocoder.py` (itself
after jik876/hifi-gan, fairseq and speech-resynthesis): same parameter names and shapes, so the release's
checkpoints load strictly, and the same arithmetic; the code is ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from slmlab.artifacts import load_json, load_tensors
from slmlab.constants import SAMPLE_RATE
from slmlab.convert import load_matching

LEAKY_SLOPE = 0.1
FALLBACK_STYLE_TOKEN = 71
"""The style token of a pitch-carrying stream that has none: the release picks one of its three most
common styles (71, 68, 98) at random; we take the first, so synthesis stays deterministic."""
DEFAULT_SPEAKER = 2  # the release's default speaker, Base and Expressive
DEFAULT_STYLE = 8  # the release's default utterance style for Base ("conv-default")


def _legacy_weight_norm_keys(module: nn.Module, state_dict: dict, prefix: str, _metadata) -> None:
    """state_dict() post-hook: parametrizations.weight.original0/1 -> weight_g/weight_v (the release's keys)."""
    for new, old in (("original0", "weight_g"), ("original1", "weight_v")):
        state_dict[prefix + old] = state_dict.pop(f"{prefix}parametrizations.weight.{new}")


def weight_normed(conv: nn.Module) -> nn.Module:
    """`conv` with weight = g * v / ||v|| (norm over all dims but 0), torch's parametrization in place of
    the deprecated `nn.utils.weight_norm` the release used. Its state_dict() names g and v `weight_g` and
    `weight_v` as the release's checkpoints do; torch's own load hook maps those names back on loading."""
    nn.utils.parametrizations.weight_norm(conv)
    conv.register_state_dict_post_hook(_legacy_weight_norm_keys)
    return conv


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1, x [B, C, T] -> [B, C, T]: for each dilation d,
    x += conv2(lrelu(conv1_d(lrelu(x)))), both convolutions `kernel_size` wide, length-preserving."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_normed(
                nn.Conv1d(
                    channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2
                )
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_normed(
                nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            )
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LEAKY_SLOPE)), LEAKY_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """Unit embeddings [B, N, encoder_embed_dim] -> log(1 + duration in frames) [B, N]: two conv + ReLU +
    LayerNorm (+ dropout) layers and a linear projection (the release's `VariancePredictor`)."""

    def __init__(
        self,
        encoder_embed_dim: int,
        var_pred_hidden_dim: int,
        var_pred_kernel_size: int,
        var_pred_dropout: float,
    ) -> None:
        super().__init__()
        hidden, kernel = var_pred_hidden_dim, var_pred_kernel_size
        self.conv1 = nn.Sequential(
            nn.Conv1d(encoder_embed_dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(hidden)
        # padding 1 whatever the kernel, as the release has it (length-preserving for its kernel of 3)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(var_pred_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2)))
        x = self.dropout(self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2)))
        return self.proj(x).squeeze(-1)


class CodeHiFiGAN(nn.Module):
    """The release's CodeHiFiGAN generator, built from its config.json (parameter names are the release's).

    Embeddings (each `embedding_dim` wide): `dict` units (`num_embeddings`), `f0_dict` pitch tokens
    (`num_f0_tokens`, Expressive), `style_dict` style tokens (`num_style_tokens`, Expressive), `spkr`
    speaker ids (`multispkr`, `num_speakers`), `style` utterance style ids (`multistyle`, `num_styles`, Base);
    `dur_predictor` when the config has `dur_predictor_params`. HiFi-GAN: conv_pre (model_in_dim ->
    upsample_initial_channel), ups[i] (channels halved, x upsample_rates[i]), resblocks (one per
    resblock_kernel_sizes entry after each up, averaged), conv_post (-> 1 channel), tanh."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        unsupported = [k for k in ("f0", "f0_quant_num_bin", "embedder_params") if config.get(k)]
        if unsupported:
            raise ValueError(
                f"config sets {unsupported}: continuous-F0 / speaker-embedding inputs are not token "
                "inputs and are not supported (Spirit LM's generators read units, f0 and style tokens)"
            )
        channels = config["upsample_initial_channel"]
        self.conv_pre = weight_normed(nn.Conv1d(config["model_in_dim"], channels, 7, padding=3))
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for rate, kernel in zip(config["upsample_rates"], config["upsample_kernel_sizes"]):
            self.ups.append(
                weight_normed(
                    nn.ConvTranspose1d(
                        channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2
                    )
                )
            )
            channels //= 2
            self.resblocks.extend(
                ResBlock(channels, size, dilations)
                for size, dilations in zip(
                    config["resblock_kernel_sizes"], config["resblock_dilation_sizes"]
                )
            )
        self.conv_post = weight_normed(nn.Conv1d(channels, 1, 7, padding=3))
        self.kernels_per_up = len(config["resblock_kernel_sizes"])

        dim = config["embedding_dim"]

        def embedding_if(count_key: str) -> nn.Embedding | None:
            return nn.Embedding(config[count_key], dim) if config.get(count_key) else None

        # attributes assigned in the release's order, so state_dict() lists keys as its checkpoints do
        self.dict = nn.Embedding(config["num_embeddings"], dim)
        self.f0_dict = embedding_if("num_f0_tokens")
        self.style_dict = embedding_if("num_style_tokens")
        self.spkr = (
            nn.Embedding(config.get("num_speakers", 200), dim) if config.get("multispkr") else None
        )
        self.style = (
            nn.Embedding(config.get("num_styles", 100), dim) if config.get("multistyle") else None
        )
        params = config.get("dur_predictor_params")
        self.dur_predictor = DurationPredictor(**params) if params else None
        # frames of 25 Hz units per pitch / style token: the release's hubert_to_f0, hubert_to_style
        self.frames_per_f0 = (
            round(config["f0_hop_size"] / config["code_hop_size"]) if self.f0_dict else None
        )
        self.frames_per_style = (
            round(config["style_hop_size"] / config["code_hop_size"]) if self.style_dict else None
        )
        streams = sum(
            e is not None for e in (self.dict, self.f0_dict, self.style_dict, self.spkr, self.style)
        )
        if streams * dim != config["model_in_dim"]:
            raise ValueError(
                f"model_in_dim {config['model_in_dim']} != {streams} embedded inputs x embedding_dim {dim}"
            )

    def durations(self, units: torch.Tensor) -> torch.Tensor:
        """Deduplicated units [N] -> predicted frames per unit [N] (round(exp(log(1 + d)) - 1), at least 1)."""
        log_durations = self.dur_predictor(self.dict(units)[None])[0]
        return (log_durations.exp() - 1).round().long().clamp_min(1)

    def forward(
        self,
        units: torch.Tensor,
        f0: torch.Tensor | None = None,
        style_tokens: torch.Tensor | None = None,
        speaker: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """units, f0, style_tokens [B, T] token ids per frame (f0 / style_tokens when the config has
        `num_f0_tokens` / `num_style_tokens`); speaker, style [B] ids (when `multispkr` / `multistyle`)
        -> waveform [B, T * prod(upsample_rates)] in [-1, 1]."""
        inputs = {
            "dict": units,
            "f0_dict": f0,
            "style_dict": style_tokens,
            "spkr": speaker,
            "style": style,
        }
        parts = []
        for name, ids in inputs.items():
            embedding = getattr(self, name)
            if embedding is None:
                continue
            if ids is None:
                raise ValueError(f"this generator reads ids for its `{name}` embedding: none given")
            per_frame = ids if ids.dim() == 2 else ids[:, None].expand_as(units)  # [B] -> [B, T]
            parts.append(embedding(per_frame))
        x = self.conv_pre(torch.cat(parts, dim=-1).transpose(1, 2))
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))
            blocks = self.resblocks[i * self.kernels_per_up : (i + 1) * self.kernels_per_up]
            x = sum(block(x) for block in blocks) / self.kernels_per_up
        # torch's default slope (0.01) before conv_post, as the release has it
        return torch.tanh(self.conv_post(F.leaky_relu(x)))[:, 0]


def per_unit_tokens(tokens: list[tuple[str, int]]) -> tuple[list[int], list[int], list[int]]:
    """A merged stream [("St", 81), ("Hu", 78), ("Pi", 13), ("Hu", 42)] -> (units, pitch, style) per unit,
    pitch and style being the last ones seen before the unit; units before the first pitch (style) get the
    first one (the release's `string_to_units`). pitch / style are empty when the stream has none."""
    units, pitch, style, current = [], [], [], {"Pi": None, "St": None}
    for kind, value in tokens:
        if kind not in ("Hu", "Pi", "St"):
            raise ValueError(f"not a speech token: ({kind!r}, {value})")
        if kind == "Hu":
            units.append(value)
            pitch.append(current["Pi"])
            style.append(current["St"])
        else:
            current[kind] = value
    first = {kind: next((v for k, v in tokens if k == kind), None) for kind in ("Pi", "St")}
    pitch = [] if first["Pi"] is None else [first["Pi"] if p is None else p for p in pitch]
    style = [] if first["St"] is None else [first["St"] if s is None else s for s in style]
    return units, pitch, style


def upsample_tokens(tokens: list[int], frames_per_token: int, frames: int, what: str) -> list[int]:
    """Tokens at a lower rate [K] -> one per frame [frames]: each repeated `frames_per_token` times, the
    last one repeated (or the end cut) to fit (the release's `upsample`, which allows a mismatch of up to
    one token)."""
    if not tokens or abs(len(tokens) * frames_per_token - frames) > frames_per_token:
        raise ValueError(
            f"{len(tokens)} {what} tokens for {frames} units, expected about {frames / frames_per_token:g} "
            f"({frames_per_token} units each): deduplicated? (then use dedup=True)"
        )
    repeated = [t for t in tokens for _ in range(frames_per_token)]
    return (repeated + repeated[-1:] * frames)[:frames]


class CodeHiFiGANVocoder:
    """Merged speech tokens -> waveform [S] at `sample_rate` through a released CodeHiFiGAN generator.

    speaker: the speaker id of generators with `multispkr` (the release's default 2); style: the
    utterance style id of generators with `multistyle` (Base; default 8); dedup: whether the streams
    carry deduplicated units (and pitch / style written only when they change), as slmlab's speech
    tokenizer does with `dedup` on and the release's strings do."""

    def __init__(
        self,
        generator: CodeHiFiGAN,
        config: dict,
        speaker: int = DEFAULT_SPEAKER,
        style: int = DEFAULT_STYLE,
        dedup: bool = True,
    ) -> None:
        self.generator = generator.eval()
        self.config, self.speaker, self.style, self.dedup = config, speaker, style, dedup
        self.sample_rate: int = config.get("sampling_rate", SAMPLE_RATE)
        self.source: Path | None = None  # the generator.pt it was loaded from
        for embedding, value, name in (
            (generator.spkr, speaker, "speaker"),
            (generator.style, style, "style"),
        ):
            if embedding is not None and not 0 <= value < embedding.num_embeddings:
                raise ValueError(
                    f"{name} {value} out of range: the generator has {embedding.num_embeddings}"
                )

    @classmethod
    def load(
        cls,
        path: str | Path,
        speaker: int | None = None,
        style: int | None = None,
        dedup: bool | None = None,
    ) -> CodeHiFiGANVocoder:
        """`path`: a release folder holding generator.pt and config.json, or the generator.pt itself with
        config.json beside it. Its "generator" state dict must fit the config exactly. speaker, style and
        dedup not given: those `save` wrote beside it (`vocoder.json`), else the release's defaults."""
        path = Path(path)
        checkpoint_path = path / "generator.pt" if path.is_dir() else path
        config_path = checkpoint_path.parent / "config.json"
        for needed in (checkpoint_path, config_path):
            if not needed.is_file():
                raise FileNotFoundError(f"CodeHiFiGAN file not found: {needed}")
        config = load_json(config_path)
        try:
            generator = CodeHiFiGAN(config)
        except KeyError as missing:
            raise ValueError(f"{config_path} lacks the key {missing}") from None
        except ValueError as error:
            raise ValueError(f"{config_path}: {error}") from None
        checkpoint = load_tensors(checkpoint_path)
        if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
            raise ValueError(f"{checkpoint_path} has no 'generator' state dict")
        load_matching(generator, checkpoint["generator"], str(checkpoint_path))
        saved_path = checkpoint_path.parent / "vocoder.json"
        saved = load_json(saved_path) if saved_path.is_file() else {}
        given = {"speaker": speaker, "style": style, "dedup": dedup}
        chosen = {
            name: value if value is not None else saved.get(name, default)
            for (name, value), default in zip(given.items(), (DEFAULT_SPEAKER, DEFAULT_STYLE, True))
        }
        vocoder = cls(generator, config, **chosen)
        vocoder.source = checkpoint_path
        return vocoder

    def save(self, folder: str | Path) -> None:
        """generator.pt ({"generator": state dict, the release's keys}) and config.json into `folder`, and
        the speaker, style and dedup it voices with (`vocoder.json`, ours)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"generator": self.generator.state_dict()}, folder / "generator.pt")
        (folder / "config.json").write_text(json.dumps(self.config, indent=2))
        chosen = {"speaker": self.speaker, "style": self.style, "dedup": self.dedup}
        (folder / "vocoder.json").write_text(json.dumps(chosen, indent=2))

    def frames(
        self, tokens: list[tuple[str, int]], durations: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """What the generator reads, per 25 Hz frame: {"units": [T], "f0": [T], "style_tokens": [T]}
        (f0 / style_tokens when it has them). Deduplicated streams: each unit with the pitch and style
        current at it, repeated by `durations` (frames per unit; predicted when None). Otherwise: one frame
        per unit (or `durations`), pitch and style tokens upsampled from their own rates."""
        generator = self.generator
        if self.dedup:
            units, pitch, style = per_unit_tokens(tokens)
        else:
            units = [value for kind, value in tokens if kind == "Hu"]
            pitch = [value for kind, value in tokens if kind == "Pi"]
            style = [value for kind, value in tokens if kind == "St"]
        device = generator.dict.weight.device
        if not units:
            return {"units": torch.zeros(0, dtype=torch.long, device=device)}
        out = {"units": units}
        if generator.f0_dict is not None:
            if not pitch:
                raise ValueError("this generator reads pitch (f0) tokens: the stream has none")
            out["f0"] = (
                pitch
                if self.dedup
                else upsample_tokens(pitch, generator.frames_per_f0, len(units), "pitch")
            )
        if generator.style_dict is not None:
            if not style:
                out["style_tokens"] = [FALLBACK_STYLE_TOKEN] * len(units)
            elif self.dedup:
                out["style_tokens"] = style
            else:
                out["style_tokens"] = upsample_tokens(
                    style, generator.frames_per_style, len(units), "style"
                )
        sizes = {
            "units": generator.dict,
            "f0": generator.f0_dict,
            "style_tokens": generator.style_dict,
        }
        for name, values in out.items():
            bad = [v for v in values if not 0 <= v < sizes[name].num_embeddings]
            if bad:
                raise ValueError(
                    f"{name} token {bad[0]} out of range: the generator has {sizes[name].num_embeddings}"
                )
        out = {
            name: torch.tensor(values, dtype=torch.long, device=device)
            for name, values in out.items()
        }
        if durations is not None:
            if len(durations) != len(units):
                raise ValueError(f"{len(durations)} durations for {len(units)} units")
            repeats = torch.tensor(durations, dtype=torch.long, device=device)
        elif self.dedup:
            if generator.dur_predictor is None:
                raise ValueError(
                    "this generator has no duration predictor: give durations= for deduplicated units "
                    "(or load with dedup=False for one frame per unit)"
                )
            repeats = generator.durations(out["units"])
        else:
            return out
        return {name: values.repeat_interleave(repeats) for name, values in out.items()}

    @torch.no_grad()
    def synthesise(
        self, tokens: list[tuple[str, int]], durations: list[int] | None = None
    ) -> torch.Tensor:
        """Merged speech tokens -> waveform [S] at `sample_rate`, S = frames x prod(upsample_rates) (empty
        when there is no unit); `durations` [N units] in 25 Hz frames overrides the predicted ones."""
        frames = self.frames(tokens, durations)
        if not len(frames["units"]):
            return torch.zeros(0)
        device = frames["units"].device
        ids = {
            name: torch.tensor([value], device=device)
            for name, value, embedding in (
                ("speaker", self.speaker, self.generator.spkr),
                ("style", self.style, self.generator.style),
            )
            if embedding is not None
        }
        with parametrize.cached():  # each weight-normed weight computed once per call
            wave = self.generator(**{name: values[None] for name, values in frames.items()}, **ids)
        return wave[0].cpu()

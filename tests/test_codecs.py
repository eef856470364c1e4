"""Codecs for CSM: the built-in RVQ codec and its dequantiser fitted on the tiny corpus, and Mimi loaded from
a local file; the evaluator's resynthesis ceiling (Griffin-Lim of the real mel at the arm's decoder settings)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from slmlab.data.manifest import audio_path, load_audio, read_manifest
from slmlab.tokenizers.codecs import BuiltinCodec, MimiCodec, load_or_fit_builtin_codec

# a codec fitted in seconds on the tiny corpus: its dequantiser sees about 3 passes over the 160 utterances
TINY = {
    "num_codebooks": 4,
    "cardinality": 32,
    "dequantiser": {"dim": 64, "layers": 2, "steps": 60, "batch_size": 8, "lr": 3e-3},
}


@pytest.fixture(scope="module")
def clip(tiny_corpus) -> torch.Tensor:
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    return load_audio(audio_path(records[0]), 24000)


def mel_error(reference: torch.Tensor, log_mel: torch.Tensor) -> float:
    """Mean |log-mel difference| over the frames both cover; reference: the log-mel of a waveform."""
    frames = min(reference.shape[1], log_mel.shape[1])
    return float((reference[:, :frames] - log_mel[:, :frames]).abs().mean())


@pytest.fixture(scope="module")
def codec(tiny_corpus) -> BuiltinCodec:
    return load_or_fit_builtin_codec(tiny_corpus, **TINY)


@pytest.fixture(scope="module")
def semantic_codec(tiny_corpus) -> BuiltinCodec:
    """TINY with codebook 0 semantic (MFCC k-means at 12.5 Hz) and three acoustic codebooks."""
    return load_or_fit_builtin_codec(tiny_corpus, **TINY, semantic={"features": "mfcc"})


def normalised_information(codes: list[int], labels: list[str]) -> float:
    """I(codes; labels) / H(labels): the share of the labels' entropy the codes tell (0 to 1)."""
    n, by_code, by_label = len(codes), Counter(codes), Counter(labels)
    joint = Counter(zip(codes, labels))
    information = sum(
        c / n * math.log(c * n / (by_code[x] * by_label[y])) for (x, y), c in joint.items()
    )
    return information / -sum(c / n * math.log(c / n) for c in by_label.values())


def test_builtin_codec_round_trip_keeps_a_held_out_clip(codec, tiny_corpus, clip, tmp_path):
    codes = codec.encode(clip)
    frames = math.ceil(len(clip) / 1920)  # 12.5 Hz at 24 kHz
    assert codec.frame_rate == 12.5 and codec.sample_rate == 24000
    assert codes.shape == (codec.num_codebooks, frames) == (4, frames) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < codec.cardinality == 32
    padded = torch.nn.functional.pad(clip, (0, frames * 1920 - len(clip)))
    reference = codec.vocoder.log_mel(padded)
    # on a validation clip the fit never saw, each codebook refines the mel of the ones before
    by_k = [mel_error(reference, codec.decode_mel(codes[:k])) for k in range(1, 5)]
    assert all(later < earlier for earlier, later in zip(by_k, by_k[1:])), by_k
    # the codes carry this clip: another utterance's codes decode further from it than its own
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    other = codec.encode(load_audio(audio_path(records[1]), 24000))
    assert by_k[-1] < 0.5 * mel_error(reference, codec.decode_mel(other)), by_k
    # Griffin-Lim's waveform has the decoded mel: re-encoded, it keeps most of codebook 0 (0.96 measured)
    audio = codec.decode(codes)
    assert audio.shape == (frames * 1920,)
    again = codec.encode(audio)
    assert float((again[0] == codes[0]).float().mean()) > 0.8
    decoded = codec.vocoder.log_mel(audio)
    own, others = codec.decode_mel(codes), codec.decode_mel(other)
    assert mel_error(own, decoded) < 0.25 * mel_error(others, decoded)
    codec.save(tmp_path / "codec")
    assert torch.equal(BuiltinCodec.load(tmp_path / "codec").encode(clip), codes)


def test_mimi_round_trip_with_random_weights_from_a_local_file(tmp_path, clip, make_cfg):
    from moshi.models.loaders import get_mimi

    save_file(get_mimi(None).state_dict(), str(tmp_path / "mimi.safetensors"))
    cfg = make_cfg(
        "model=csm",
        "tokenizer/speech=codec_mimi",
        f"tokenizer.speech.weights_path={tmp_path / 'mimi.safetensors'}",
        "tokenizer.speech.num_codebooks=8",
    )
    codec = instantiate(cfg.tokenizer.speech, corpus=None)  # as `slmlab-train` builds it
    second = clip[:24000]
    codes = codec.encode(second)
    assert codec.frame_rate == 12.5 and codec.sample_rate == 24000 and codec.cardinality == 2048
    assert codes.shape == (8, 13) and codes.max() < 2048
    assert codec.decode(codes).shape == (13 * 1920,)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        MimiCodec("kyutai/moshiko-pytorch-bf16")
    with pytest.raises(ValueError, match="1 to 32 codebooks"):
        MimiCodec(str(tmp_path / "mimi.safetensors"), num_codebooks=33)


def test_the_dequantiser_decodes_held_out_clips_closer_than_the_centroid_sum(codec, tiny_corpus):
    """On validation clips the fit never saw, the same codes decode closer to the source mel through the
    trained dequantiser than as the plain sum of their centroids."""
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    clips = [load_audio(audio_path(r), 24000) for r in records[:8]]
    centroid_sum = BuiltinCodec(
        codec.config, codec.codebooks, codec.mean, codec.std, dequantiser=None
    )

    def held_out_l1(decoder: BuiltinCodec) -> float:
        errors = []
        for wav in clips:
            source = codec.frames(wav).reshape(-1, 80).T * codec.std[:, None] + codec.mean[:, None]
            errors.append(mel_error(source, decoder.decode_mel(codec.encode(wav))))
        return sum(errors) / len(errors)

    learned, summed = held_out_l1(codec), held_out_l1(centroid_sum)
    assert learned < 0.99 * summed, (learned, summed)  # an untrained dequantiser returns the sum


def test_a_semantic_codebook_0_follows_the_words_more_and_the_voice_less_than_an_acoustic_one(
    codec, semantic_codec, tiny_corpus
):
    """Over the frames of the held-out clips, codebook 0 of the semantic codec tells more about the word being
    spoken and less about who speaks than codebook 0 of the same-sized acoustic codec: what lets CSM's
    backbone read its text into codebook 0."""
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    told = {}
    for name, fitted in (("acoustic", codec), ("semantic", semantic_codec)):
        first, words, voices = [], [], []
        for r in records:
            codes = fitted.encode(load_audio(audio_path(r), 24000))
            for t, code in enumerate(codes[0].tolist()):
                centre = (t + 0.5) / fitted.frame_rate
                word = [w["word"] for w in r.words if w["start"] <= centre < w["end"]]
                if word:
                    first.append(code)
                    words.append(word[0])
                    voices.append(r.speaker)
        told[name] = (normalised_information(first, words), normalised_information(first, voices))
    (acoustic_words, acoustic_voice), (semantic_words, semantic_voice) = told.values()
    assert semantic_words > acoustic_words and semantic_voice < acoustic_voice, told


def test_the_dequantiser_reads_the_semantic_codebook(semantic_codec, tiny_corpus, tmp_path):
    """A held-out clip's codes (semantic codebook first) decode closer to its mel with its own codebook 0
    than with another clip's; saved and loaded, the codec encodes it the same."""
    records, _ = read_manifest(tiny_corpus.manifest("val"), check_audio=False)
    own, swapped = [], []
    for r, other in zip(records[:8], records[8:16]):
        wav = load_audio(audio_path(r), 24000)
        codes, foreign = (
            semantic_codec.encode(wav),
            semantic_codec.encode(load_audio(audio_path(other), 24000)),
        )
        assert codes.shape == (4, math.ceil(len(wav) / 1920)) and codes.max() < 32
        frames = min(codes.shape[1], foreign.shape[1])
        mixed = torch.cat([foreign[:1, :frames], codes[1:, :frames]])
        source = semantic_codec.vocoder.log_mel(
            torch.nn.functional.pad(wav, (0, 1920 * codes.shape[1] - len(wav)))
        )
        own.append(mel_error(source, semantic_codec.decode_mel(codes[:, :frames])))
        swapped.append(mel_error(source, semantic_codec.decode_mel(mixed)))
    assert sum(own) < sum(swapped), (own, swapped)
    semantic_codec.save(tmp_path / "codec")
    wav = load_audio(audio_path(records[0]), 24000)
    assert torch.equal(
        BuiltinCodec.load(tmp_path / "codec").encode(wav), semantic_codec.encode(wav)
    )


def test_a_semantic_codebook_without_an_acoustic_one_is_refused():
    from slmlab.tokenizers.codecs import fit_builtin_codec

    with pytest.raises(ValueError, match="num_codebooks >= 2"):
        fit_builtin_codec([torch.zeros(24000)], num_codebooks=1, semantic={"features": "mfcc"})


class _CodecArm:
    """A speaking arm whose speech tokens are `codec`'s (as CSM's are): resynthesis only."""

    sample_rate = 24000
    capabilities = frozenset({"resynthesise"})
    speaks = True

    def __init__(self, codec: BuiltinCodec) -> None:
        self.codec = codec

    def eval(self):
        return self

    def resynthesise(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(self.codec.encode(waveform))


class _GriffinLimJudge:
    """Hears only Griffin-Lim of the real test mels at the codec's settings (`expected`: 16 kHz waveform ->
    text): right on every other one, one word wrong on the rest; anything else as nothing."""

    def __init__(self, expected: list[tuple[torch.Tensor, str]]) -> None:
        self.expected = expected

    def transcribe(self, waveforms):
        texts = []
        for wave in waveforms:
            found = [
                (i, text)
                for i, (heard, text) in enumerate(self.expected)
                if heard.shape == wave.shape and torch.allclose(heard, wave, atol=1e-5)
            ]
            texts.append(
                "" if not found else found[0][1] if found[0][0] % 2 == 0 else "x " + found[0][1]
            )
        return texts


def test_the_resynthesis_ceiling_is_the_judge_on_griffin_lim_of_the_real_mel(codec, tiny_corpus):
    from slmlab.eval.evaluate import Evaluator, _to_judge
    from slmlab.eval.metrics import error_rates

    codec.vocoder.griffin_lim.rand_init = (
        False  # the same waveform each time (torchaudio starts at random)
    )
    records, _ = read_manifest(tiny_corpus.manifest("test"), check_audio=False)
    expected = [
        (
            _to_judge(
                codec.vocoder.mel_to_wave(codec.vocoder.log_mel(load_audio(audio_path(r), 24000))),
                24000,
            ),
            r.text,
        )
        for r in records[:6]
    ]
    judge = _GriffinLimJudge(expected)
    evaluation = Evaluator(tiny_corpus, judge, None, utterances=6)(_CodecArm(codec))
    heard = judge.transcribe([wave for wave, _ in expected])
    assert 0 < evaluation.metrics["resynthesis_ceiling_wer"] < 1
    assert evaluation.metrics["resynthesis_ceiling_wer"] == pytest.approx(
        error_rates(heard, [r.text for r in records[:6]])["wer"]
    )
    assert (
        evaluation.metrics["resynthesis_wer"] == 1.0
    )  # the codec's own output is not the ceiling's


def test_the_report_says_where_resynthesis_loses_words():
    from slmlab.eval.compare import Cell, reading
    from slmlab.eval.evaluate import METRICS

    table = {
        "csm": {**dict.fromkeys(METRICS), "resynthesis_wer": Cell(0.4, 0.0, 1)},
        "text_lm": dict.fromkeys(METRICS),
    }
    table["csm"]["resynthesis_ceiling_wer"] = Cell(0.15, 0.0, 1)
    lines = reading([], table, {"judge_wer": 0.11, "trivial_wer": 0.99})
    (line,) = [x for x in lines if "resynthesis_ceiling_wer" in x]
    assert line == (
        "- **resynthesis_wer against resynthesis_ceiling_wer** (the judge on real audio: 0.110): csm "
        "0.400 against its ceiling 0.150 (+0.040 from Griffin-Lim, +0.250 from its speech tokens and "
        "their decoder)."
    )


def test_the_report_says_how_much_of_csm_tts_is_lost_by_its_backbone_and_by_its_decoder():
    from slmlab.eval.compare import Cell, reading
    from slmlab.eval.evaluate import METRICS

    cells = {"tts_wer": 1.2, "true_codebook0_wer": 0.9, "resynthesis_wer": 0.3}
    table = {
        "csm": {**dict.fromkeys(METRICS), **{k: Cell(v, 0.0, 1) for k, v in cells.items()}},
        "speechlm": dict.fromkeys(METRICS),
    }
    lines = reading([], table, {"judge_wer": 0.11, "trivial_wer": 0.99})
    (line,) = [x for x in lines if "true_codebook0_wer" in x]
    assert line == (
        "- **tts_wer against true_codebook0_wer and resynthesis_wer**: csm 1.200 from text, 0.900 with the "
        "true codebook 0 (+0.300 from its backbone's codebook 0), 0.300 with every true codebook (+0.600 "
        "from its decoder's other codebooks)."
    )

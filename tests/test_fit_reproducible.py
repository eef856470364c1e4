"""A fit's weights come from its settings' seed alone: slmlab-prepare seeds nothing before it fits, and
torch's global generator starts from a random seed in each process, so a fit that drew its initial weights
from it came out different in every `make demo`."""

from __future__ import annotations

import pytest
import torch

from slmlab.artifacts import load_tensors
from slmlab.data.corpora import ManifestCorpus
from slmlab.tokenizers.codecs import load_or_fit_builtin_codec
from slmlab.tokenizers.unit_vocoder import load_or_fit_unit_vocoder
from slmlab.tokenizers.units import load_or_fit_speech_tokenizer

CAP_HOURS = 0.01


def fit_unit_vocoder(corpus):
    units = load_or_fit_speech_tokenizer(
        corpus, n_units=8, n_styles=2, max_hours=CAP_HOURS, max_frames=300
    )
    return (
        load_or_fit_unit_vocoder(
            corpus, units, epochs=1, batch_size=4, dim=16, layers=1, max_hours=CAP_HOURS
        ).source
        / "unit_to_mel.pt"
    )


def fit_codec_with_dequantiser(corpus):
    codec = load_or_fit_builtin_codec(
        corpus,
        num_codebooks=2,
        cardinality=8,
        max_hours=CAP_HOURS,
        max_frames=200,
        dequantiser={"steps": 3, "dim": 16, "layers": 1, "batch_size": 2},
    )
    return codec.source / "codec.pt"


def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """A saved state (tensors, and dicts of them: the codec keeps its dequantiser's) by dotted key."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("fit", [fit_unit_vocoder, fit_codec_with_dequantiser])
def test_a_fit_gives_the_same_weights_whatever_the_global_generator_held(
    fit, tiny_corpus, tmp_path
):
    manifests = [str(tiny_corpus.manifest(s)) for s in ("train", "val", "test")]
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # as a process that drew other numbers first
        root = tmp_path / f"fitted_after_{global_seed}"
        weights.append(flat(load_tensors(fit(ManifestCorpus(*manifests, root=str(root))))))
    assert weights[0].keys() == weights[1].keys() and any(
        "dequantiser" in k or "mel" in k for k in weights[0]
    )
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

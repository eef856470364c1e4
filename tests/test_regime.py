"""regime=recipe: each arm starts from the pretrained parts its recipe names (a text LM fitted once per
corpus, slmlab.pretrain), loaded through the arm's own pretrained-checkpoint key, with the same architecture
as from scratch; a recipe run's folder loads without those parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from slmlab.models.pretrained import load_audio_encoder
from slmlab.runs import PRETRAINED_PARTS, build, load_task

# a text LM and a speech encoder fitted in seconds on the tiny corpus (shared by the tests); the encoder's
# sizes also size SpeechLM's from-scratch encoder (model/speechlm/encoder=fastconformer_corpus)
TINY_PRETRAIN = [
    "pretrain.text_lm.steps=30",
    "pretrain.text_lm.warmup_steps=5",
    "pretrain.speech_encoder.model.hidden_size=32",
    "pretrain.speech_encoder.model.num_hidden_layers=1",
    "pretrain.speech_encoder.model.num_attention_heads=2",
    "pretrain.speech_encoder.model.intermediate_size=64",
    "pretrain.speech_encoder.model.conv_kernel_size=7",
    "pretrain.speech_encoder.model.subsampling_conv_channels=8",
    "pretrain.speech_encoder.epochs=0.5",
]


def holds(module: torch.nn.Module, weight: torch.Tensor) -> bool:
    """Whether one of `module`'s tensors is exactly `weight`."""
    return any(
        t.shape == weight.shape and torch.equal(t, weight) for t in module.state_dict().values()
    )


@pytest.mark.parametrize("arm", ["text_lm", "spiritlm_base", "csm", "speechlm"])
def test_recipe_starts_the_arm_from_the_corpus_text_lm(arm, make_cfg, tiny_corpus, tmp_path):
    """The arm's LM layers are the fitted text LM's (its MLP of layer 0, which no conversion permutes, and
    its token embeddings for the BPE's ids), and the network has as many parameters as from scratch."""
    _, recipe = build(make_cfg(f"experiment=tiny_{arm}", "regime=recipe", *TINY_PRETRAIN), tmp_path)
    _, scratch = build(make_cfg(f"experiment=tiny_{arm}", *TINY_PRETRAIN))
    folders = json.loads((tmp_path / PRETRAINED_PARTS).read_text())
    assert len(folders) == (2 if arm == "speechlm" else 1)
    lm = AutoModelForCausalLM.from_pretrained(next(f for f in folders.values() if "/text_lm/" in f))
    gate = lm.model.layers[0].mlp.gate_proj.weight.detach()
    embeddings = lm.get_input_embeddings().weight.detach()
    assert holds(recipe, gate) and not holds(scratch, gate)
    assert any(  # the BPE's rows of the arm's text embeddings (grown for its own tokens)
        t.ndim == 2
        and t.shape[1] == embeddings.shape[1]
        and t.shape[0] >= len(embeddings)
        and torch.equal(t[: len(embeddings)], embeddings)
        for t in recipe.state_dict().values()
    )
    count = lambda task: sum(p.numel() for p in task.parameters())  # noqa: E731
    assert count(recipe) == count(scratch)
    assert all(
        module.training for module in recipe.modules()
    )  # loaded in eval mode, trained in train


def test_recipe_starts_speechlm_from_the_corpus_speech_encoder(make_cfg, tiny_corpus, tmp_path):
    """SpeechLM's encoder is the corpus's speech encoder (pretrain.speech_encoder), every weight of it, and
    from scratch the same architecture with other weights."""
    _, recipe = build(
        make_cfg("experiment=tiny_speechlm", "regime=recipe", *TINY_PRETRAIN), tmp_path
    )
    _, scratch = build(make_cfg("experiment=tiny_speechlm", *TINY_PRETRAIN))
    folder = json.loads((tmp_path / PRETRAINED_PARTS).read_text())["net.encoder.pretrained_path"]
    assert "/speech_encoder/" in folder
    fitted = load_audio_encoder(folder).state_dict()
    ours, fresh = recipe.net.encoder.state_dict(), scratch.net.encoder.state_dict()
    assert ours.keys() == fitted.keys() == fresh.keys()
    assert all(torch.equal(ours[k], fitted[k]) for k in fitted)
    assert not all(torch.equal(fresh[k], fitted[k]) for k in fitted)


def test_recipe_needs_an_arm_with_a_recipe(make_cfg, tiny_corpus):
    cfg = make_cfg("experiment=tiny_text_lm", "regime=recipe")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(cfg.model, "recipe", None)
        with pytest.raises(ValueError, match="names no pretrained parts.*regime=from_scratch"):
            build(cfg)


def test_a_recipe_run_loads_without_its_pretrained_parts(tiny_corpus, tmp_path):
    """The run's checkpoint holds every weight: with the corpus (and the text LM fitted in it) gone, the run
    loads from its folder, built from scratch at the same sizes, with the trained weights."""
    corpus = tmp_path / "data" / "synthetic" / Path(tiny_corpus.root).name
    shutil.copytree(tiny_corpus.root, corpus)
    run_cli(
        "slmlab-train",
        "experiment=tiny_text_lm",
        "regime=recipe",
        *TINY_PRETRAIN,
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "test=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    folder = Path(
        next(iter(json.loads((tmp_path / "run" / PRETRAINED_PARTS).read_text()).values()))
    )
    assert folder.is_relative_to(corpus)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    shutil.rmtree(corpus)
    task = load_task(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").regime == "recipe"
    for key, value in task.state_dict().items():
        assert torch.equal(value, trained["state_dict"][key]), key

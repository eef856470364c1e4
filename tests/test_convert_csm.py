"""CSM checkpoints in and out (`slmlab.convert.csm`): transformers' `CsmForConditionalGeneration` and Sesame's
release layout, each written by its own library's classes, give our model the same logits (fp32, atol 1e-5), and
our exports give the same logits there."""

# no `from __future__ import annotations`: the hub mixin reads SesameModel's `config: SesameArgs` annotation
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import fit_on_tiny_corpus
from huggingface_hub import PyTorchModelHubMixin
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from torchtune.models.llama3_2 import llama3_2
from transformers import CsmConfig, CsmForConditionalGeneration, MimiConfig

from slmlab.convert import CheckpointMismatchError
from slmlab.convert import csm as convert
from slmlab.models.csm import CSM, build_csm
from slmlab.runs import compose

K, CARD, TEXT = 4, 32, 100
TEXT_FRAMES, FRAMES = 4, 12
# a RoPE scaling that bites within 12 positions: wavelengths over 64 slowed 8 times, 16..64 smoothed
BACKBONE = dict(
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=64,
    intermediate_dim=128,
    max_seq_len=64,
    rope_base=10_000,
    scale_factor=8,
    high_freq_factor=4,
    old_context_len=64,
)
DECODER = dict(
    num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64, max_seq_len=K
)


def frames(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens, mask [batch, FRAMES, K+1]: TEXT_FRAMES text frames (column K), then audio frames (columns 0..K-1)."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.zeros(batch, FRAMES, K + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:, :TEXT_FRAMES, -1] = torch.randint(0, TEXT, (batch, TEXT_FRAMES), generator=generator)
    tokens[:, TEXT_FRAMES:, :K] = torch.randint(
        1, CARD, (batch, FRAMES - TEXT_FRAMES, K), generator=generator
    )
    mask[:, :TEXT_FRAMES, -1] = True
    mask[:, TEXT_FRAMES:, :K] = True
    return tokens, mask


@torch.no_grad()
def our_logits(model: CSM, tokens: torch.Tensor, mask: torch.Tensor):
    """-> codebook-0 logits at every frame [B, S, V], and the decoder's [N, K-1, V] for every audio frame after
    the first frame (teacher-forced on that frame's codes)."""
    h = model.backbone(model.embed_frames(tokens, mask))
    rows, cols, targets = model.audio_targets(tokens, mask, torch.full((len(tokens),), FRAMES))
    return model.codebook0_head(h), model.decoder_logits(h[rows, cols], targets)


@torch.no_grad()
def transformers_logits(hf: CsmForConditionalGeneration, tokens: torch.Tensor):
    """The same in transformers: text frames embedded by `embed_text_tokens`, audio frames by the backbone's code
    embeddings; labels on the audio frames make its forward run the depth decoder on them."""
    codes = tokens[:, TEXT_FRAMES:, :K]
    embeds = torch.cat(
        [hf.embed_text_tokens(tokens[:, :TEXT_FRAMES, -1]), hf.backbone_model.embed_tokens(codes)],
        dim=1,
    )
    labels = torch.full(tokens[..., :K].shape, -100)
    labels[:, TEXT_FRAMES:] = codes
    out = hf(inputs_embeds=embeds, labels=labels)
    return out.logits, out.depth_decoder_logits


def assert_same_logits(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def tiny_csm_config() -> CsmConfig:
    """BACKBONE's RoPE as the transformers release writes CSM-1B's (original_max_position_embeddings and both
    factors halved); the depth decoder with plain RoPE; a tiny Mimi."""
    return CsmConfig(
        num_codebooks=K,
        vocab_size=CARD,
        text_vocab_size=TEXT,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10_000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 0.5,
            "high_freq_factor": 2.0,
            "original_max_position_embeddings": 32,
        },
        pad_token_id=None,
        bos_token_id=None,
        audio_token_id=None,
        audio_eos_token_id=None,
        codebook_pad_token_id=None,
        depth_decoder_config=dict(
            num_codebooks=K,
            backbone_hidden_size=64,
            vocab_size=CARD,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=K + 1,
        ),
        codec_config=MimiConfig(
            hidden_size=32,
            num_filters=4,
            num_residual_layers=1,
            upsampling_ratios=[8, 4],
            codebook_size=64,
            codebook_dim=64,
            vector_quantization_hidden_dimension=64,
            upsample_groups=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            sliding_window=4,
            num_quantizers=K,
        ),
    )


# -- Sesame's release layout, built as its models.py builds it ------------------------------------------------
TINY_FLAVORS = {
    "tiny-backbone": dict(
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=64,
        intermediate_dim=128,
        max_seq_len=64,
    ),
    "tiny-decoder": dict(
        num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64, max_seq_len=64
    ),
}
TINY_ARGS = dict(
    backbone_flavor="tiny-backbone",
    decoder_flavor="tiny-decoder",
    text_vocab_size=TEXT,
    audio_vocab_size=CARD,
    audio_num_codebooks=K,
)


@dataclass
class SesameArgs:
    """The fields of Sesame's `ModelArgs`."""

    backbone_flavor: str
    decoder_flavor: str
    text_vocab_size: int
    audio_vocab_size: int
    audio_num_codebooks: int


def torchtune_flavor(name: str) -> nn.Module:
    """A flavor as Sesame builds one: torchtune's llama3_2 (rope_base 500,000, scale_factor 32) with identity
    token embeddings and output."""
    model = llama3_2(vocab_size=128_256, **TINY_FLAVORS[name], rope_base=500_000, scale_factor=32)
    model.tok_embeddings, model.output = nn.Identity(), nn.Identity()
    return model


class SesameModel(nn.Module, PyTorchModelHubMixin):
    """Sesame's `Model` (SesameAILabs/csm, models.py): its module names and shapes, saved by the same hub mixin."""

    def __init__(self, config: SesameArgs):
        super().__init__()
        self.config = config
        self.backbone = torchtune_flavor(config.backbone_flavor)
        self.decoder = torchtune_flavor(config.decoder_flavor)
        backbone_dim = TINY_FLAVORS[config.backbone_flavor]["embed_dim"]
        decoder_dim = TINY_FLAVORS[config.decoder_flavor]["embed_dim"]
        V, K_ = config.audio_vocab_size, config.audio_num_codebooks
        self.text_embeddings = nn.Embedding(config.text_vocab_size, backbone_dim)
        self.audio_embeddings = nn.Embedding(V * K_, backbone_dim)
        self.projection = nn.Linear(backbone_dim, decoder_dim, bias=False)
        self.codebook0_head = nn.Linear(backbone_dim, V, bias=False)
        self.audio_head = nn.Parameter(torch.randn(K_ - 1, decoder_dim, V) * decoder_dim**-0.5)


@torch.no_grad()
def sesame_logits(sesame: SesameModel, tokens: torch.Tensor, mask: torch.Tensor):
    """our_logits computed as Sesame's generate_frame does: a frame is the masked sum of its K code embeddings
    (codebook k at rows k*V..) and its text embedding; the decoder reads [h, codebook 0, .., codebook K-2]."""
    offsets = CARD * torch.arange(K)
    columns = torch.cat(
        [
            sesame.audio_embeddings(tokens[..., :K] + offsets),
            sesame.text_embeddings(tokens[..., K:]),
        ],
        dim=2,
    )
    h = sesame.backbone((columns * mask[..., None]).sum(2))
    b, t = mask[:, 1:, :K].any(-1).nonzero(as_tuple=True)  # audio frame t+1 follows state t
    codes = tokens[b, t + 1, :K]
    inputs = torch.cat(
        [h[b, t][:, None], sesame.audio_embeddings(codes[:, :-1] + offsets[:-1])], dim=1
    )
    out = sesame.decoder(sesame.projection(inputs))[:, 1:]
    decoder = torch.stack([out[:, k] @ sesame.audio_head[k] for k in range(K - 1)], dim=1)
    return sesame.codebook0_head(h), decoder


@pytest.fixture
def tiny_flavors(monkeypatch):
    """Our FLAVORS knowing the tiny ones, as Sesame's FLAVORS must to build them."""
    for name, sizes in TINY_FLAVORS.items():
        monkeypatch.setitem(convert.FLAVORS, name, sizes)


def tiny_sesame(seed: int = 0) -> SesameModel:
    torch.manual_seed(seed)
    return SesameModel(SesameArgs(**TINY_ARGS)).eval()


# -- tests ---------------------------------------------------------------------------------------------------
def test_a_transformers_checkpoint_imports_with_its_logits(tmp_path):
    torch.manual_seed(0)
    hf = CsmForConditionalGeneration(tiny_csm_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert convert.detect(tmp_path / "hf") == "transformers"
    model, sizes = convert.import_checkpoint(tmp_path / "hf")
    # llama3 scaling (factor 8, low 0.5, high 2, original 32) is ours with low 1; plain RoPE is scaling by 1
    rope = ("scale_factor", "high_freq_factor", "old_context_len")
    assert [sizes["backbone"][k] for k in rope] == [8, 4, 64]
    assert sizes["decoder"]["scale_factor"] == 1
    tokens, mask = frames()
    assert_same_logits(our_logits(model.eval(), tokens, mask), transformers_logits(hf, tokens))


def test_b_our_export_loads_in_transformers_with_our_logits(tmp_path):
    torch.manual_seed(0)
    model = CSM(TEXT, CARD, K, BACKBONE, DECODER).eval()
    out = convert.export_checkpoint(model, tmp_path / "hf", "transformers")
    hf, info = CsmForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    # every CSM weight written; the codec's are not ours to write
    assert {k.split(".")[0] for k in info["missing_keys"]} == {"codec_model"}
    tokens, mask = frames()
    assert_same_logits(our_logits(model, tokens, mask), transformers_logits(hf.eval(), tokens))
    back, sizes = convert.import_checkpoint(out)  # and back: every tensor as it was
    assert sizes == convert.sizes_of(model)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_c_sesame_release_layouts_import_with_their_logits(tmp_path, tiny_flavors, monkeypatch):
    sesame = tiny_sesame()
    # Sesame's release: config.json + model.safetensors, written by the hub mixin
    sesame.save_pretrained(tmp_path / "release")
    assert json.loads((tmp_path / "release" / "config.json").read_text()) == TINY_ARGS
    (tmp_path / "ckpt").mkdir()
    # the older release: a state dict alone
    torch.save(sesame.state_dict(), tmp_path / "ckpt" / "ckpt.pt")
    # a lone ckpt.pt is read as CSM-1B (6 GB), here as the tiny model
    monkeypatch.setattr(convert, "CSM_1B_ARGS", TINY_ARGS)
    tokens, mask = frames()
    reference = sesame_logits(sesame, tokens, mask)
    for path in (tmp_path / "release", tmp_path / "ckpt", tmp_path / "ckpt" / "ckpt.pt"):
        assert convert.detect(path) == "sesame", path
        model, _ = convert.import_checkpoint(path)
        assert_same_logits(our_logits(model.eval(), tokens, mask), reference)

    out = convert.export_checkpoint(model, tmp_path / "export", "sesame")
    assert json.loads((out / "config.json").read_text()) == TINY_ARGS  # flavors named as Sesame's
    assert_same_logits(sesame_logits(SesameModel.from_pretrained(out), tokens, mask), reference)


def test_c_sizes_of_no_flavor_travel_in_the_sesame_config(tmp_path):
    """Sizes that are no flavor (ours, here) are written under "flavors", which Sesame's loader ignores."""
    torch.manual_seed(0)
    model = CSM(TEXT, CARD, K, BACKBONE, DECODER).eval()
    out = convert.export_checkpoint(model, tmp_path / "export", "sesame")
    args = json.loads((out / "config.json").read_text())
    assert (args["backbone_flavor"], args["decoder_flavor"]) == (
        "slmlab-backbone",
        "slmlab-decoder",
    )
    back, sizes = convert.import_checkpoint(out)
    assert sizes == convert.sizes_of(model)
    tokens, mask = frames()
    assert_same_logits(our_logits(back.eval(), tokens, mask), our_logits(model, tokens, mask))
    del args["flavors"]
    (out / "config.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match="flavor 'slmlab-backbone' is none of"):
        convert.import_checkpoint(out)


def test_d_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path, tiny_flavors):
    tiny_sesame().save_pretrained(tmp_path / "release")
    config = tmp_path / "release" / "config.json"
    config.write_text(json.dumps({**TINY_ARGS, "text_vocab_size": TEXT + 1}))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"model.safetensors: text_embeddings.weight has shape \(100, 64\), the model expects \(101, 64\)",
    ):
        convert.import_checkpoint(tmp_path / "release")

    torch.manual_seed(0)
    CsmForConditionalGeneration(tiny_csm_config()).save_pretrained(tmp_path / "hf")
    config = tmp_path / "hf" / "config.json"
    config.write_text(
        config.read_text().replace('"num_key_value_heads": 2', '"num_key_value_heads": 4')
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=r"backbone_model.layers.0.self_attn.k_proj.weight \(ours: backbone.layers.0.attn.k_proj.weight\) "
        r"has shape \(32, 64\), the model expects \(64, 64\)",
    ):
        convert.import_checkpoint(tmp_path / "hf")
    config.write_text(
        config.read_text().replace('"num_key_value_heads": 4', '"num_key_value_heads": 2')
    )
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(weights)
    q = "backbone_model.layers.1.self_attn.q_proj.weight"
    save_file({**state, q: state[q][:40]}, weights)  # not whole heads: no q/k permutation fits it
    with pytest.raises(
        CheckpointMismatchError,
        match=r"backbone_model.layers.1.self_attn.q_proj.weight \(ours: backbone.layers.1.attn.q_proj.weight\) "
        r"has shape \(40, 64\), the model expects \(64, 64\)",
    ):
        convert.import_checkpoint(tmp_path / "hf")


def test_build_csm_starts_from_a_checkpoint_of_its_sizes(tmp_path):
    """`model.task.net.pretrained_path`: every weight from the checkpoint; settings that shapes do not show are
    checked too."""
    torch.manual_seed(0)
    source = CSM(TEXT, CARD, K, BACKBONE, DECODER)
    convert.export_checkpoint(source, tmp_path / "hf", "transformers")
    model = build_csm(TEXT, CARD, K, BACKBONE, DECODER, pretrained_path=str(tmp_path / "hf"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    other_heads = {**BACKBONE, "num_heads": 8, "num_kv_heads": 4}  # every shape the same
    with pytest.raises(
        CheckpointMismatchError, match="backbone.num_heads is 4 in the checkpoint, 8"
    ):
        build_csm(TEXT, CARD, K, other_heads, DECODER, pretrained_path=str(tmp_path / "hf"))
    with pytest.raises(
        CheckpointMismatchError, match="backbone.old_context_len is 64 in the checkpoint"
    ):
        build_csm(
            TEXT,
            CARD,
            K,
            {**BACKBONE, "old_context_len": 8192},
            DECODER,
            pretrained_path=str(tmp_path / "hf"),
        )
    with pytest.raises(ValueError, match="init_device=meta"):
        build_csm(
            TEXT,
            CARD,
            K,
            BACKBONE,
            DECODER,
            init_device="meta",
            pretrained_path=str(tmp_path / "hf"),
        )


def test_detect_leaves_other_checkpoints_to_other_arms(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, num_hidden_layers=1).save_pretrained(tmp_path / "llama")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "hubert.pt")
    (tmp_path / "not_torch.pt").write_text("text")
    for path in ("llama", "hubert.pt", "not_torch.pt", "."):
        assert convert.detect(tmp_path / path) is None, path
    with pytest.raises(ValueError, match="not a CSM checkpoint"):
        convert.import_checkpoint(tmp_path / "llama")


def test_sesame_flavors_are_the_1b_preset(make_cfg):
    net = make_cfg("model=csm", "model/csm/size=1b").model.task.net
    assert OmegaConf.to_container(net.backbone) == convert.FLAVORS["llama-1B"]
    assert OmegaConf.to_container(net.decoder) == convert.FLAVORS["llama-100M"]


def test_e_a_csm_trained_here_generates_in_transformers(tiny_corpus, make_cfg, tmp_path):
    task, _, _ = fit_on_tiny_corpus(make_cfg("experiment=tiny_csm", "trainer.max_steps=5"))
    model = task.net.eval()
    out = convert.export_checkpoint(model, tmp_path / "hf", "transformers")
    hf = CsmForConditionalGeneration.from_pretrained(out).eval()
    tokens, mask = task.segment("the dog runs", "us_m3")  # the prompt: text frames of [speaker]text
    new_frames = 6
    ours = model.generate(tokens[None], mask[None], max_frames=new_frames, topk=1)  # greedy
    with torch.no_grad():
        ours_c0 = model.codebook0_head(model.backbone(model.embed_frames(tokens[None], mask[None])))
        theirs = hf.generate(
            input_ids=tokens[None, :, -1],
            max_new_tokens=new_frames,
            do_sample=False,
            depth_decoder_do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    torch.testing.assert_close(theirs.logits[0], ours_c0[:, -1], atol=1e-5, rtol=0)
    generated = theirs.sequences[0].T  # [K, T]
    assert ours.shape[1] >= 1 and torch.equal(generated[:, : ours.shape[1]], ours)
    if (
        ours.shape[1] < new_frames
    ):  # we stopped at the all-zero end frame, which transformers went past
        assert not generated[:, ours.shape[1]].any()


def test_the_readme_fine_tune_csm_1b_command_composes_csm_1b(tmp_path):
    """The README's "Fine-tune CSM-1B" command, composed and checked as slmlab-train does, builds (here on the
    meta device: no weights) a model whose every size and setting is that of Sesame's CSM-1B release, which is
    what `load_pretrained` checks before it reads a weight."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = readme.split("- **Fine-tune CSM-1B**")[1].split("```")[1]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0].endswith("slmlab-train")
    cfg = compose("train", argv[1:])
    assert cfg.model.task.net.pretrained_path == "/models/csm-1b"
    assert cfg.model.task.net.init_device is None  # allocated, to be trained
    release = convert.CSM_1B_ARGS
    net = instantiate(cfg.model.task.net)(
        text_vocab_size=release["text_vocab_size"],  # the recipe's Llama-3.2 tokenizer
        num_codebooks=cfg.tokenizer.speech.num_codebooks,
        cardinality=cfg.model.task.audio_vocab_size,
        init_device="meta",
        pretrained_path=None,
    )
    theirs = convert._sesame_sizes(release, tmp_path / "config.json")
    assert convert.sizes_of(net) == {
        **theirs,
        "backbone": {k: theirs["backbone"][k] for k in convert.sizes_of(net)["backbone"]},
        "decoder": {k: theirs["decoder"][k] for k in convert.sizes_of(net)["decoder"]},
    }

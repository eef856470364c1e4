"""Spirit LM's released layout: a tiny release folder loaded, mapped onto our speech tokens, continued,
generated from and exported back (src/slmlab/convert/spiritlm.py, layout=release).

The release folders here are written as the release's are: a random `LlamaForCausalLM` saved with
`save_pretrained` (pytorch_model.bin) beside a sentencepiece Llama tokenizer (tokenizer.model) holding
`[Text]`, `[Speech]`, `[Hu0]`..`[Hu500]` and, Expressive, `[Pi0]`..`[Pi63]`, `[St0]`..`[St99]` as added
tokens right after its text ids. The text vocabulary is a 320-piece sentencepiece BPE fitted on the tiny
corpus instead of Llama-2's 32,000 pieces; the special tokens keep the release's relative layout and
its padding (rows rounded up to a multiple of 128), so every id is the release's minus 31,680.
"""

from __future__ import annotations

import io
import re

import pytest
import sentencepiece
import torch
from conftest import fit_on_tiny_corpus
from hydra.utils import instantiate
from tokenizers import Tokenizer, models
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedTokenizerFast,
)

from slmlab.convert import CheckpointMismatchError
from slmlab.convert.spiritlm import detect, export_checkpoint, import_checkpoint, load_release_lm
from slmlab.data.manifest import read_split
from slmlab.models.spiritlm import generate_in_modality
from slmlab.runs import build, compose
from slmlab.tasks.spiritlm import SpiritLMTask
from slmlab.tokenizers.interleaved import RELEASE_SIZES, InterleavedVocabulary
from slmlab.tokenizers.text import TextTokenizer
from slmlab.tokenizers.units import SpeechTokenizer

TEXT_PIECES = 320
KINDS = {"base": ("Hu",), "expressive": ("Hu", "Pi", "St")}
ROWS = {"base": 896, "expressive": 1024}  # 320 + 2 + 501 (+ 164) tokens, rounded up to 128s
TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192)


def release_names(kinds) -> list[str]:
    return ["[Text]", "[Speech]"] + [f"[{k}{v}]" for k in kinds for v in range(RELEASE_SIZES[k])]


def sized_speech_tokenizer(n_units: int, n_pitch: int, n_styles: int) -> SpeechTokenizer:
    """An unfitted speech tokenizer of these sizes: its strings, parsing and merging (all the token
    layout reads), without encoding audio."""
    return SpeechTokenizer(
        {"features": "mfcc", "dedup": True},
        torch.zeros(n_units, 39),
        torch.zeros(n_pitch - 2),
        torch.zeros(n_styles, 6),
        torch.ones(2, 6),
    )


@pytest.fixture
def speech_tokenizer():
    """The sizes of experiment=tiny_spiritlm_expressive's tokenizer: 50 units, 64 pitch, 8 styles."""
    return sized_speech_tokenizer(50, 64, 8)


@pytest.fixture(scope="module")
def releases(tiny_corpus, tmp_path_factory) -> dict:
    """variant -> (release folder, the original model saved there)."""
    texts = [record.text for record in read_split(tiny_corpus, "train")[0]]
    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_file,
        vocab_size=TEXT_PIECES,
        model_type="bpe",
        byte_fallback=True,  # as Llama-2's tokenizer.model
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    spm_path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    spm_path.write_bytes(model_file.getvalue())
    out = {}
    for variant, kinds in KINDS.items():
        folder = tmp_path_factory.mktemp(f"spirit-lm-{variant}-tiny")
        tokenizer = LlamaTokenizer(vocab_file=str(spm_path), legacy=False)
        tokenizer.add_tokens(
            release_names(kinds)
        )  # not special: the reference decodes them as text
        tokenizer.save_pretrained(folder)
        config = LlamaConfig(vocab_size=ROWS[variant], rms_norm_eps=1e-5, **TINY_LLAMA)
        torch.manual_seed(len(kinds))
        original = LlamaForCausalLM(config).eval()
        original.save_pretrained(folder, safe_serialization=False)  # pytorch_model.bin, as released
        out[variant] = folder, original
    return out


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def prompt(variant: str) -> str:
    """A prompt as the reference builds it: one string of text and speech tokens."""
    speech = "[Hu12][Pi3][Hu7][St5][Hu500]" if variant == "expressive" else "[Hu12][Hu7][Hu500]"
    return f"[Text]the dog runs[Speech]{speech}[Text] fast"


def mixed_ids(tokenizer: TextTokenizer, variant: str) -> list[int]:
    return tokenizer.encode(prompt(variant), bos=True, eos=False)


@pytest.mark.parametrize("variant", ["base", "expressive"])
def test_a_release_folder_loads_and_exports_with_the_same_logits(releases, variant, tmp_path):
    folder, original = releases[variant]
    assert detect(folder) == "spiritlm"
    checkpoint = import_checkpoint(folder)
    assert checkpoint.kinds == KINDS[variant] and checkpoint.sizes["vocab_size"] == ROWS[variant]
    ids = mixed_ids(checkpoint.tokenizer, variant)
    assert (
        ids[1] == TEXT_PIECES and TEXT_PIECES + 2 + 500 in ids
    )  # [Text] and [Hu500] at release ids
    assert torch.allclose(logits(checkpoint.net, ids), logits(original, ids), atol=1e-5)

    export_checkpoint(checkpoint, tmp_path / "out", "spiritlm")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    slow = LlamaTokenizer.from_pretrained(tmp_path / "out")  # the class the reference loads
    assert slow.encode(prompt(variant)) == ids
    assert torch.allclose(logits(reloaded, ids), logits(original, ids), atol=1e-5)
    assert detect(tmp_path / "out") == "spiritlm"
    with pytest.raises(ValueError, match="exports to spiritlm, not 'sesame'"):
        export_checkpoint(checkpoint, tmp_path / "other", "sesame")


def test_folders_of_other_layouts_are_not_detected(releases, tiny_corpus, tmp_path):
    folder, original = releases["expressive"]
    original.save_pretrained(tmp_path / "plain")  # a Llama without the release's tokens
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model")).save_pretrained(tmp_path / "plain")
    plain = TextTokenizer.from_pretrained(tmp_path / "plain")
    plain.hf.add_special_tokens(
        {"additional_special_tokens": ["[TEXT]", "[SPEECH]", "[Hu0]"]}
    )  # our layout's spelling
    plain.save(tmp_path / "plain")
    assert detect(tmp_path / "plain") is None
    assert detect(tmp_path) is None  # no config.json
    with pytest.raises(ValueError, match="not a Spirit LM release folder"):
        import_checkpoint(tmp_path / "plain")


def test_our_speech_tokens_take_the_release_ids(releases, speech_tokenizer):
    tokenizer = TextTokenizer.from_pretrained(releases["expressive"][0])
    vocab = InterleavedVocabulary(tokenizer, speech_tokenizer, KINDS["expressive"], "release")
    hf = tokenizer.hf
    assert vocab.speech_ids([("Hu", 12)]) == [hf.convert_tokens_to_ids("[Hu12]")] == [334]
    assert (vocab.text_id, vocab.speech_id, vocab.text_size, len(vocab)) == (320, 321, 320, 1024)
    assert vocab.offsets == {"Hu": 322, "Pi": 823, "St": 887}  # release: 32002, 32503, 32567
    string = "[Hu12][Pi3][St5]"
    ids = vocab.speech_ids(speech_tokenizer.parse(string))
    assert ids == tokenizer.encode(
        string, bos=False, eos=False
    )  # as the release tokenizer reads it
    assert speech_tokenizer.to_string(vocab.speech_tokens(ids)) == string
    with pytest.raises(ValueError, match="not a speech token id"):
        vocab.speech_tokens([322 + 50])  # [Hu50]: a release unit our 50-unit tokenizer never makes

    # the release's order: style, pitch, units at equal times; pitch and units merged, style never
    streams = {
        "units": torch.tensor([3] * 25 + [4] * 5),  # 1.2 s at 25 Hz
        "pitch": torch.tensor([2] * 12 + [6] * 3),  # 12.5 Hz
        "style": torch.tensor([5, 5]),  # 1 Hz
    }
    assert speech_tokenizer.to_string(vocab.merge(streams)) == "[St5][Pi2][Hu3][Pi6][St5][Hu4]"
    assert speech_tokenizer.to_string(vocab.merge(streams, 0.9, 1.2)) == "[Hu3][Pi6][St5][Hu4]"

    never = set(vocab.suppressed_ids("ARBITRARY"))  # release units beyond ours, pitch/style beyond
    assert {322 + 50, 322 + 500, 887 + 8, 987, 1023} <= never  # ours, our pad and the padding rows
    assert not never & {*vocab.speech_ids([("Hu", 49), ("Pi", 63), ("St", 7)]), 320, 321, 2, 100}

    base = TextTokenizer.from_pretrained(releases["base"][0])
    with pytest.raises(ValueError, match=re.escape("has no [Pi0]")):
        InterleavedVocabulary(base, speech_tokenizer, KINDS["expressive"], "release")
    with pytest.raises(ValueError, match=re.escape("has no [Hu501]")):
        InterleavedVocabulary(tokenizer, sized_speech_tokenizer(600, 64, 8), ("Hu",), "release")


def test_a_size_or_vocabulary_that_does_not_fit_is_refused_naming_the_key(releases):
    folder, _ = releases["expressive"]
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape(
            "model.embed_tokens.weight has shape (1024, 64), the model expects (1024, 128)"
        ),
    ):
        load_release_lm(1024, str(folder), hidden_size=128)
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape(
            "model.embed_tokens.weight has shape (1024, 64), the model expects (896, 64)"
        ),
    ):
        load_release_lm(896, str(folder))  # a Base vocabulary on the Expressive checkpoint
    with pytest.raises(
        CheckpointMismatchError,
        match=re.escape("9 keys missing (first: ['model.layers.2.input_layernorm.weight'])"),
    ):
        load_release_lm(1024, str(folder), num_layers=3)
    with pytest.raises(CheckpointMismatchError, match="num_heads=4, .+ num_attention_heads=2"):
        load_release_lm(1024, str(folder), num_heads=4)  # every shape fits: caught by the config


@pytest.mark.parametrize("modality", ["TEXT", "SPEECH"])
def test_generation_from_a_release_never_writes_rows_our_tokenizers_cannot_read(
    releases, speech_tokenizer, modality, monkeypatch
):
    """An LM biased (+30) towards the rows our tokenizers cannot turn into text or audio (the release's
    units 50..500, pitch and style values beyond ours, the padding rows) still writes only usable ids."""
    folder, _ = releases["expressive"]
    net = lambda **kw: load_release_lm(pretrained_path=str(folder), **kw)  # noqa: E731
    task = SpiritLMTask(
        net,
        TextTokenizer.from_pretrained(folder),
        speech_tokenizer,
        optimizer=None,
        speech_streams=["units", "pitch", "style"],
        layout="release",
    ).eval()
    vocab, steps = task.vocab, 25
    unusable = torch.zeros(len(vocab), dtype=torch.bool)
    unusable[vocab.unused_ids] = True
    task.net.lm_head.register_forward_hook(lambda module, args, out: out + 30.0 * unusable)
    generated = []

    def recording(*args, **kwargs):
        generated.append(generate_in_modality(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr("slmlab.tasks.spiritlm.generate_in_modality", recording)
    torch.manual_seed(0)
    sampling = dict(do_sample=True, temperature=1.0, top_p=1.0)
    out = task.generate(
        [("TEXT", "the dog")], modality, min_new_tokens=steps, max_new_tokens=steps, **sampling
    )
    new_ids = generated[-1]
    assert len(new_ids) == steps and not unusable[new_ids].any()
    if modality == "SPEECH":
        assert vocab.is_speech(new_ids).all() and out["text"] == ""
        assert speech_tokenizer.parse(out["speech_tokens"])  # [Hu..][Pi..][St..] of ours
    else:
        assert vocab.is_text(new_ids).all() and out["text"] and out["speech_tokens"] == ""
    task.generate([("TEXT", "the dog")], "ARBITRARY", max_new_tokens=steps, **sampling)
    assert not unusable[generated[-1]].any()


def test_training_continues_from_a_release_folder(releases, tiny_corpus, make_cfg, tmp_path):
    """experiment=tiny_spiritlm_expressive with model/spiritlm/layout=release: the run starts from the
    release's weights and tokenizer, its losses fall, and it exports back to the release layout."""
    folder, original = releases["expressive"]
    cfg = make_cfg(
        "experiment=tiny_spiritlm_expressive",
        "model/spiritlm/layout=release",
        f"model.task.net.pretrained_path={folder}",
        "trainer.max_steps=12",
        "trainer.val_check_interval=12",
    )
    datamodule, task = build(cfg)
    ids = mixed_ids(task.tokenizer, "expressive")
    assert torch.allclose(logits(task.net, ids), logits(original, ids), atol=1e-5)
    task, before, after = fit_on_tiny_corpus(cfg, built=(datamodule, task))
    for name in ("val/text_loss", "val/speech_loss", "val/interleaved_loss"):
        assert after[name] < 0.9 * before[name], (name, before, after)

    task.eval()
    spoken = task.generate([("TEXT", "the dog")], "SPEECH", min_new_tokens=20, max_new_tokens=40)
    assert spoken["audio"] is not None and spoken["audio"].abs().max() > 0
    assert all(  # the speech pieces, space-separated where the output switched modality and back
        kind in ("Hu", "Pi", "St")
        for piece in spoken["speech_tokens"].split(" ")
        for kind, _ in task.speech_tokenizer.parse(piece)
    )
    export_checkpoint(task, tmp_path / "continued", "spiritlm")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "continued").eval()
    assert torch.allclose(logits(reloaded, ids), logits(task.net, ids), atol=1e-5)
    assert not torch.allclose(logits(reloaded, ids), logits(original, ids), atol=1e-3)
    assert SpeechTokenizer.load(tmp_path / "continued").n_units == 50  # our units, beside the LM


def continue_7b_recipe(model: str, folder, init_device: str = "null") -> list[str]:
    """The README's "continue Spirit LM 7B" overrides (slmlab-train ...) for a release folder."""
    return [
        f"model={model}",
        "model/spiritlm/size=7b",
        "model/spiritlm/layout=release",
        f"model.task.net.pretrained_path={folder}",
        f"model.task.net.init_device={init_device}",
        "data=librispeech",
        "data.source=/data/LibriSpeech",
        "precision=bf16-true",
        "strategy=fsdp",
    ]


@pytest.mark.parametrize(
    "variant,model,rows",
    [("base", "spiritlm_base", 32512), ("expressive", "spiritlm_expressive", 32768)],
)
def test_the_continue_spirit_lm_7b_recipe_composes_on_the_meta_device(
    variant, model, rows, tmp_path
):
    """The recipe with a release folder holding config.json and the tokenizer but no weights, composed and
    checked as slmlab-train does, built on the meta device: Llama-2-7B's sizes, the release's ids and its
    32,512 / 32,768 rows."""
    folder = tmp_path / f"spirit-lm-{variant}-7b"
    text = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, 32000)}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(text, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    hf.add_tokens(release_names(KINDS[variant]))
    hf.save_pretrained(folder)
    LlamaConfig(
        vocab_size=rows,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ).save_pretrained(folder)
    cfg = compose("train", continue_7b_recipe(model, folder, init_device="meta"))  # no weights
    assert cfg.tokenizer.text.path == str(folder)
    task = instantiate(
        cfg.model.task,
        tokenizer=instantiate(cfg.tokenizer.text),
        speech_tokenizer=sized_speech_tokenizer(500, 64, 100),
    )
    vocab, net = task.vocab, task.net
    assert (vocab.text_id, vocab.speech_id, vocab.offsets["Hu"], len(vocab)) == (
        32000,
        32001,
        32002,
        rows,
    )
    if variant == "expressive":
        assert (vocab.offsets["Pi"], vocab.offsets["St"]) == (32503, 32567)
    assert net.device.type == "meta" and net.get_input_embeddings().weight.shape == (rows, 4096)
    layer = net.model.layers[0]
    assert len(net.model.layers) == 32 and layer.mlp.up_proj.weight.shape == (11008, 4096)
    assert net.config.rms_norm_eps == 1e-5 and net.config.max_position_embeddings == 4096
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert sum(p.numel() for p in net.parameters()) == 2 * rows * 4096 + 32 * per_layer + 4096

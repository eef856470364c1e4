"""`slmlab-convert`: the input's layout detected, the output written in `to`'s layout, and inputs that do not
fit refused with the key or the choices named (each arm's conversions are tested in tests/test_convert_*.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from transformers import CsmForConditionalGeneration

from slmlab.convert import CheckpointMismatchError, arm_modules, convert
from slmlab.convert import csm as convert_csm
from slmlab.models.csm import CSM

K, CARD, TEXT = 4, 32, 100
BACKBONE = dict(
    num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=64, intermediate_dim=128, max_seq_len=64
)
DECODER = dict(
    num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64, max_seq_len=K
)


def sesame_folder(tmp_path: Path) -> tuple[CSM, Path]:
    torch.manual_seed(0)
    model = CSM(TEXT, CARD, K, BACKBONE, DECODER).eval()
    return model, convert_csm.export_checkpoint(model, tmp_path / "sesame", "sesame")


def test_every_arm_has_a_converter():
    assert set(arm_modules()) == {"csm", "speechlm", "spiritlm"}


def test_the_cli_turns_a_sesame_folder_into_a_transformers_one(tmp_path):
    model, sesame = sesame_folder(tmp_path)
    run_cli(
        "slmlab-convert",
        f"input={sesame}",
        f"output={tmp_path / 'hf'}",
        "to=transformers",
        f"hydra.run.dir={tmp_path / 'log'}",
        cwd=tmp_path,
    )
    CsmForConditionalGeneration.from_pretrained(tmp_path / "hf")  # transformers reads it
    back, _ = convert_csm.import_checkpoint(tmp_path / "hf")
    for key, tensor in model.state_dict().items():  # the q/k permutation undone on the way back
        assert torch.equal(back.state_dict()[key], tensor), key


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path):
    _, sesame = sesame_folder(tmp_path)
    config = json.loads((sesame / "config.json").read_text())
    (sesame / "config.json").write_text(json.dumps(config | {"text_vocab_size": TEXT + 1}))
    with pytest.raises(CheckpointMismatchError, match="text_embeddings.weight"):
        convert(sesame, tmp_path / "hf", "transformers")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "slmlab-convert"), f"input={sesame}",
         f"output={tmp_path / 'out'}", "to=transformers", f"hydra.run.dir={tmp_path / 'log'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0 and "text_embeddings.weight" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_layout_the_arm_has_not_is_refused_with_its_choices(tmp_path):
    _, sesame = sesame_folder(tmp_path)
    with pytest.raises(ValueError, match=r"csm checkpoint in the sesame layout; it converts to: "
                       r"sesame, transformers \(not to=ultravox\)"):  # fmt: skip
        convert(sesame, tmp_path / "out", "ultravox")
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint any arm reads"):
        convert(tmp_path / "notes", tmp_path / "out", "transformers")

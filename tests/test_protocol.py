"""The arm protocol: declared capabilities are checked against one signature each, the evaluator asks
only for what is declared, and a new arm needs no edit outside its own files."""

import csv
import json
from pathlib import Path

import pytest
import torch

from slmlab.tasks.protocol import CAPABILITIES, can, check_arm

TOY_ARM = Path(__file__).parent / "toy_arm"


class _Arm:
    capabilities = frozenset({"score_texts", "continue_speech", "synthesise"})
    speaks = False

    def score_texts(self, texts, batch_size=32):
        return [(0.0, 1) for _ in texts]

    def continue_speech(self, prompt, seconds, prompt_text="", speaker=None, next_text=""):
        return prompt

    def synthesise(self, text, speaker, max_seconds):
        return torch.zeros(1)


def test_an_arm_that_does_not_speak_is_asked_for_no_speech_output():
    arm = _Arm()
    check_arm(arm)
    assert can(arm, "score_texts") and not can(arm, "transcribe")
    assert not can(arm, "synthesise") and not can(arm, "continue_speech")
    arm.speaks = True
    assert can(arm, "synthesise") and can(arm, "continue_speech")
    with pytest.raises(KeyError, match="unknown capability"):
        can(arm, "translate")


def test_a_method_that_drifts_from_its_protocol_is_refused():
    class Drifted(_Arm):
        def continue_speech(self, prompt, seconds=2.0, **texts):  # the texts as free keywords
            return prompt

    with pytest.raises(TypeError, match=r"Drifted.continue_speech.*prompt, seconds, prompt_text"):
        check_arm(Drifted())

    class Missing(_Arm):
        capabilities = frozenset({"transcribe"})

    with pytest.raises(TypeError, match="declares 'transcribe' but has no such method"):
        check_arm(Missing())

    class Required(_Arm):
        def score_texts(self, texts, normalise):  # a further parameter without a default
            return []

    with pytest.raises(TypeError, match="Required.score_texts"):
        check_arm(Required())


@pytest.mark.parametrize("arm", ["text_lm", "speechlm", "spiritlm_base", "csm"])
def test_every_arm_follows_the_protocol_it_declares(arm):
    from hydra.utils import get_class

    from slmlab.runs import compose

    task_class = get_class(compose("train", [f"model={arm}"]).model.task._target_)
    assert task_class.capabilities and task_class.capabilities <= set(CAPABILITIES)
    for name in task_class.capabilities:  # the signatures, without building the arm
        check_arm(type("Declared", (), {"capabilities": {name}, name: getattr(task_class, name)})())
    assert task_class.fsdp_block_classes(), "each arm names its FSDP units"


@pytest.mark.slow
def test_a_toy_fourth_arm_runs_through_training_evaluation_and_the_report(
    data_dir, tmp_path, monkeypatch
):
    """tests/toy_arm holds a task file and a model config and nothing else; slmlab-train finds them
    through Hydra's search path and the module path, slmlab-eval's metrics and the report follow."""
    from conftest import TINY_EVAL, run_cli

    monkeypatch.setenv("PYTHONPATH", str(TOY_ARM))
    run_dir = tmp_path / "bigram"
    run_cli(
        "slmlab-train",
        f"hydra.searchpath=[file://{TOY_ARM / 'conf'}]",
        "model=bigram",
        f"paths.data_dir={data_dir}",
        "data.preset=tiny",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "evaluate=true",
        *TINY_EVAL,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    evaluated = json.loads((run_dir / "metrics.json").read_text())["eval"]["metrics"]
    assert {k for k, v in evaluated.items() if v is not None} == {
        "text_ppl",
        "lexical_text",
        "syntactic_text",
        "lexical_text_per_token",
        "syntactic_text_per_token",
    }
    run_cli(
        "slmlab-compare", f"sweep_dir={tmp_path}", f"out_dir={tmp_path / 'report'}", cwd=tmp_path
    )
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert [r["arm"] for r in rows if r["seed"] == "0"] == ["bigram"]
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| bigram | n/a | n/a |" in readme  # asr_wer, asr_cer: not declared
    assert float(rows[0]["text_ppl"]) == pytest.approx(evaluated["text_ppl"])


def test_fsdp_wraps_the_blocks_the_chosen_arm_declares():
    from hydra.utils import instantiate
    from torchtune.modules import TransformerSelfAttentionLayer

    from slmlab.runs import compose

    policy = compose("train", ["model=csm", "strategy=fsdp"]).trainer.strategy.auto_wrap_policy
    assert instantiate(policy) == {TransformerSelfAttentionLayer}

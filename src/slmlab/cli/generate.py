"""slmlab-generate: load a trained run from its checkpoint and answer one text and/or audio input.

Writes <output_dir>/output.txt (and output.wav and output.speech_tokens.txt for speech output) and prints the text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import soundfile
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from slmlab.cli import CONF_DIR
from slmlab.cli.train import build
from slmlab.data.manifest import load_audio

log = logging.getLogger(__name__)


def load_task(ckpt_path: str | Path, with_config: bool = False):
    """The run's task with the checkpoint's weights, rebuilt from `<run>/.hydra/config.yaml` (and that
    config, `with_config`)."""
    ckpt_path = Path(ckpt_path)
    run_config = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not ckpt_path.is_file() or not run_config.is_file():
        raise FileNotFoundError(
            f"{ckpt_path}: expected a checkpoint inside a run folder with {run_config}"
        )
    cfg = OmegaConf.load(run_config)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ckpt_path.parent.parent)
    _, task = build(cfg)
    task.load_state_dict(torch.load(ckpt_path, map_location="cpu")["state_dict"])
    return (task.eval(), cfg) if with_config else task.eval()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> dict:
    task = load_task(cfg.ckpt_path)
    audio = load_audio(cfg.audio, task.sample_rate) if cfg.audio else None
    overrides = {
        k: v
        for k, v in OmegaConf.to_container(cfg.generation, resolve=True).items()
        if v is not None
    }
    if cfg.get("speaker"):
        overrides["speaker"] = cfg.speaker
    output = task.respond(text=cfg.text, audio=audio, modality=cfg.modality, **overrides)
    out_dir = Path(cfg.paths.output_dir)
    (out_dir / "output.txt").write_text((output.get("text") or "") + "\n")
    if output.get(
        "speech_tokens"
    ):  # spiritlm: the generated speech as tokens ([St3][Hu12][Pi40]...)
        (out_dir / "output.speech_tokens.txt").write_text(output["speech_tokens"] + "\n")
    if output.get("audio") is not None:
        soundfile.write(out_dir / "output.wav", output["audio"].numpy(), output["sample_rate"])
    log.info("output in %s", out_dir)
    print(output.get("text") or "")
    return output


if __name__ == "__main__":
    main()

"""slmlab-generate: load a trained run from its checkpoint and answer one text and/or audio input. The
run is loaded from its folder alone (`runs.load_task`: its config, checkpoint and tokenizers/); its
corpus is not read.

Writes <output_dir>/output.txt (and output.wav and output.speech_tokens.txt for speech output) and prints the text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import soundfile
from omegaconf import DictConfig

from slmlab.config_checks import check_config
from slmlab.data.manifest import load_audio
from slmlab.runs import CONF_DIR, load_task

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> dict:
    check_config(cfg, "generate")
    task = load_task(cfg.ckpt_path, generation=cfg.generation)
    L.seed_everything(cfg.seed)
    audio = load_audio(cfg.audio, task.sample_rate) if cfg.audio else None
    speaker = {"speaker": cfg.speaker} if cfg.get("speaker") else {}
    output = task.respond(text=cfg.text, audio=audio, modality=cfg.modality, **speaker)
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

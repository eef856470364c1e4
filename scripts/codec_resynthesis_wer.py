"""Where the built-in codec loses words: the judge's WER on the first test utterances of a prepared corpus,
heard as real audio, as Griffin-Lim of the real log-mel at the codec's mel settings (the vocoder's ceiling)
and as the codec's resynthesis (encode then decode). Prints one JSON object.

    .venv/bin/python scripts/codec_resynthesis_wer.py data/synthetic/default_seed0 [codec overrides]
    .venv/bin/python scripts/codec_resynthesis_wer.py data/synthetic/default_seed0 num_codebooks=16

Overrides are `key=value` on conf/tokenizer/speech/codec_builtin.yaml; the codec is loaded from the corpus's
artifacts, or fitted there once (`load_or_fit_builtin_codec`). The judge is the one of conf/eval/default.yaml,
fitted on the corpus beforehand (`slmlab-prepare evaluate=true`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from slmlab.data.corpora import ManifestCorpus
from slmlab.data.manifest import audio_path, load_audio, read_split
from slmlab.eval.evaluate import _to_judge
from slmlab.eval.metrics import error_rates

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_root", help="a prepared corpus folder (train/val/test.jsonl)")
    parser.add_argument("overrides", nargs="*", help="key=value on codec_builtin.yaml")
    parser.add_argument("--utterances", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.corpus_root)
    corpus = ManifestCorpus(
        *(str(root / f"{s}.jsonl") for s in ("train", "val", "test")), str(root)
    )
    codec_cfg = OmegaConf.merge(
        OmegaConf.load(CONF / "tokenizer/speech/codec_builtin.yaml"),
        OmegaConf.from_dotlist(args.overrides),
    )
    judge_cfg = OmegaConf.load(CONF / "eval/default.yaml").judge
    judge = instantiate(judge_cfg, corpus=corpus)
    started = time.perf_counter()
    codec = instantiate(codec_cfg, corpus=corpus)
    fit_or_load_seconds = time.perf_counter() - started
    test = read_split(corpus, "test")[0][: args.utterances]
    texts = [r.text for r in test]
    rate = codec.sample_rate
    waves = [load_audio(audio_path(r), rate) for r in test]
    heard = {"real": [_to_judge(w, rate) for w in waves]}
    torch.manual_seed(0)  # Griffin-Lim starts from random phases: the same ones for both
    heard["griffin_lim_of_real_mel"] = [
        _to_judge(codec.vocoder.mel_to_wave(codec.vocoder.log_mel(w)), rate) for w in waves
    ]
    torch.manual_seed(0)
    heard["resynthesis"] = [_to_judge(codec.decode(codec.encode(w)), rate) for w in waves]
    report = {
        "corpus": str(root),
        "codec": str(codec.source),
        "overrides": args.overrides,
        "codec_fit_or_load_seconds": round(fit_or_load_seconds, 1),
        "utterances": len(test),
        **{
            f"wer_{name}": error_rates(judge.transcribe(w), texts)["wer"]
            for name, w in heard.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

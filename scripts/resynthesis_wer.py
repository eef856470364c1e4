"""Where Spirit LM's units path loses words: the judge's WER on the first test utterances of a prepared
corpus, heard as real audio, as Griffin-Lim of the real log-mel at the unit vocoder's mel settings (the
vocoder's ceiling) and as resynthesis through the speech tokens and the fitted unit vocoder (what
`SpiritLMTask.resynthesise` does). Prints one JSON object.

    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0                  # MFCC units
    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0 --tokenizer units_hubert

`--tokenizer` picks conf/tokenizer/speech/<name>.yaml (units_mfcc, units_hubert: units from the corpus's own
pretrained speech encoder unless `hubert_path` is given); overrides are `key=value` on it (`hubert_layer=3`,
`decoder.epochs=4`). The tokenizer, its vocoder and the speech encoder are loaded from the corpus's
artifacts, or fitted there once. The judge is the one of conf/eval/default.yaml,
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

from slmlab.constants import SAMPLE_RATE
from slmlab.data.corpora import ManifestCorpus
from slmlab.data.manifest import load_audio, read_split
from slmlab.eval.metrics import error_rates

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_root", help="a prepared corpus folder (train/val/test.jsonl)")
    parser.add_argument("overrides", nargs="*", help="key=value on the speech tokenizer's yaml")
    parser.add_argument(
        "--tokenizer", default="units_mfcc", help="conf/tokenizer/speech/<name>.yaml"
    )
    parser.add_argument("--streams", default="units", help="units (Base) or units,pitch,style")
    parser.add_argument("--utterances", type=int, default=48)
    args = parser.parse_intermixed_args()  # overrides before or after the options
    torch.set_num_threads(1)
    torch.manual_seed(0)  # Griffin-Lim starts from random phases
    root = Path(args.corpus_root)
    corpus = ManifestCorpus(
        *(str(root / f"{s}.jsonl") for s in ("train", "val", "test")), str(root)
    )
    tokenizer_yaml = OmegaConf.load(CONF / f"tokenizer/speech/{args.tokenizer}.yaml")
    for parent in tokenizer_yaml.pop("defaults", []):  # units_hubert extends units_mfcc
        if parent != "_self_":
            base = OmegaConf.load(CONF / f"tokenizer/speech/{parent}.yaml")
            tokenizer_yaml = OmegaConf.merge(base, tokenizer_yaml)
    tokenizer_cfg = OmegaConf.merge(tokenizer_yaml, OmegaConf.from_dotlist(args.overrides))
    judge = instantiate(OmegaConf.load(CONF / "eval/default.yaml").judge, corpus=corpus)
    started = time.perf_counter()
    tokenizer = instantiate(tokenizer_cfg, corpus=corpus, _convert_="all")
    fit_or_load_seconds = time.perf_counter() - started
    vocoder, streams = tokenizer.decoder, tuple(args.streams.split(","))
    test = read_split(corpus, "test")[0][: args.utterances]
    waves = [load_audio(r.audio_filepath, SAMPLE_RATE) for r in test]
    heard = {
        "real": waves,
        "griffin_lim_of_real_mel": [vocoder.mel_to_wave(vocoder.log_mel(w)) for w in waves],
        "resynthesis": [
            tokenizer.decode(tokenizer.merge(tokenizer.encode_streams(w, streams))) for w in waves
        ],
    }
    texts = [r.text for r in test]
    report = {
        "corpus": str(root),
        "tokenizer": str(tokenizer.source),
        "vocoder": str(vocoder.source),
        "overrides": args.overrides,
        "streams": list(streams),
        "fit_or_load_seconds": round(fit_or_load_seconds, 1),
        "utterances": len(test),
        **{
            f"wer_{name}": error_rates(judge.transcribe(w), texts)["wer"]
            for name, w in heard.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

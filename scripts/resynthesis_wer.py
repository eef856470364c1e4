"""Where an arm's speech path loses words: the judge's WER on the first test utterances of a prepared corpus,
heard as real audio, as Griffin-Lim of the real log-mel at the decoder's mel settings (the vocoder's
ceiling) and as resynthesis through the speech tokens and their decoder: Spirit LM's units and unit vocoder
(what `SpiritLMTask.resynthesise` does) or CSM's built-in codec (encode, then decode). Prints one JSON object.

    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0                  # MFCC units
    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0 --tokenizer units_hubert
    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0 --tokenizer codec_builtin
    .venv/bin/python scripts/resynthesis_wer.py data/synthetic/default_seed0 --tokenizer codec_builtin num_codebooks=8

`--tokenizer` picks conf/tokenizer/speech/<name>.yaml (units_mfcc; units_hubert: units from the corpus's own
pretrained speech encoder unless `hubert_path` is given; codec_builtin); overrides are `key=value` on it
(`hubert_layer=3`, `decoder.epochs=4`, `num_codebooks=16`). The tokenizer, its decoder and the speech encoder
are loaded from the corpus's artifacts, or fitted there once. The judge is the one of conf/eval/default.yaml,
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
from slmlab.data.manifest import audio_path, load_audio, read_split
from slmlab.eval.evaluate import _to_judge
from slmlab.eval.intervals import interval, metric_value, paired_difference
from slmlab.eval.metrics import item_errors

CONF = Path(__file__).resolve().parents[1] / "conf"


def tokenizer_config(name: str, overrides: list[str]):
    """conf/tokenizer/speech/<name>.yaml with its defaults merged under it (units_hubert extends
    units_mfcc), then the `key=value` overrides; `${pretrain.*}` resolves against conf/pretrain/default.yaml."""
    config = OmegaConf.load(CONF / f"tokenizer/speech/{name}.yaml")
    for parent in config.pop("defaults", []):
        if parent != "_self_":
            config = OmegaConf.merge(
                OmegaConf.load(CONF / f"tokenizer/speech/{parent}.yaml"), config
            )
    pretrain = OmegaConf.load(CONF / "pretrain/default.yaml")
    root = OmegaConf.create({"pretrain": pretrain, "tokenizer": config})
    return OmegaConf.merge(root, {"tokenizer": OmegaConf.from_dotlist(overrides)}).tokenizer


def speech_path(tokenizer, streams: tuple[str, ...]):
    """(the mel vocoder, its sample rate, waveform -> resynthesised waveform) of a units tokenizer or a
    codec."""
    if hasattr(tokenizer, "encode_streams"):  # Spirit LM's units
        return (
            tokenizer.decoder,
            SAMPLE_RATE,
            lambda w: tokenizer.decode(tokenizer.merge(tokenizer.encode_streams(w, streams))),
        )
    return tokenizer.vocoder, tokenizer.sample_rate, lambda w: tokenizer.decode(tokenizer.encode(w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_root", help="a prepared corpus folder (train/val/test.jsonl)")
    parser.add_argument("overrides", nargs="*", help="key=value on the speech tokenizer's yaml")
    parser.add_argument(
        "--tokenizer", default="units_mfcc", help="conf/tokenizer/speech/<name>.yaml"
    )
    parser.add_argument(
        "--streams", default="units", help="units: units (Base) or units,pitch,style"
    )
    parser.add_argument("--utterances", type=int, default=48)
    args = parser.parse_intermixed_args()  # overrides before or after the options
    torch.set_num_threads(1)
    root = Path(args.corpus_root)
    corpus = ManifestCorpus(
        *(str(root / f"{s}.jsonl") for s in ("train", "val", "test")), str(root)
    )
    judge = instantiate(OmegaConf.load(CONF / "eval/default.yaml").judge, corpus=corpus)
    started = time.perf_counter()
    tokenizer = instantiate(
        tokenizer_config(args.tokenizer, args.overrides), corpus=corpus, _convert_="all"
    )
    fit_or_load_seconds = time.perf_counter() - started
    streams = tuple(args.streams.split(","))
    vocoder, rate, resynthesise = speech_path(tokenizer, streams)
    test = read_split(corpus, "test")[0][: args.utterances]
    waves = [
        load_audio(audio_path(r) if rate != SAMPLE_RATE else r.audio_filepath, rate) for r in test
    ]
    heard = {"real": waves}
    torch.manual_seed(0)  # Griffin-Lim starts from random phases: the same ones for both
    heard["griffin_lim_of_real_mel"] = [vocoder.mel_to_wave(vocoder.log_mel(w)) for w in waves]
    torch.manual_seed(0)
    heard["resynthesis"] = [resynthesise(w) for w in waves]
    texts = [r.text for r in test]
    items = {}  # name -> {"ids", "num", "den"}: word edits and reference words per utterance
    for name, wave in heard.items():
        edits, words = item_errors(judge.transcribe([_to_judge(w, rate) for w in wave]), texts)[
            "wer"
        ]
        items[name] = {"ids": list(range(len(test))), "num": edits, "den": words}
    loss = paired_difference("wer", [items["resynthesis"]], [items["griffin_lim_of_real_mel"]])
    report = {
        "corpus": str(root),
        "tokenizer": str(tokenizer.source),
        "vocoder": str(getattr(vocoder, "source", None) or tokenizer.source),
        "overrides": args.overrides,
        "streams": list(streams),
        "fit_or_load_seconds": round(fit_or_load_seconds, 1),
        "utterances": len(test),
        **{
            f"wer_{name}": [
                round(metric_value("wer", run["num"], run["den"]), 4),
                [round(bound, 4) for bound in interval("wer", [run])],
            ]
            for name, run in items.items()
        },
        "wer_resynthesis_minus_ceiling": [round(loss[0], 4), [round(b, 4) for b in loss[1:]]],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

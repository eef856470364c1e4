"""Write a LibriSpeech-layout tree spoken by eSpeak NG (slmlab.data.synthetic.write_librispeech_like), to
run the published-scale path (data=librispeech) on this machine:

    .venv/bin/python scripts/make_librispeech_like.py /tmp/LibriSpeechLike --files 20000
    .venv/bin/slmlab-prepare data=librispeech data.source=/tmp/LibriSpeechLike data.root=/tmp/ls_manifests
"""

import argparse
import json
import logging
import time

from slmlab.data.synthetic import write_librispeech_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a new (or empty) folder for the tree")
    parser.add_argument(
        "--files", type=int, default=20000, help="utterances in all (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    summary = write_librispeech_like(args.root, args.files, args.seed)
    print(json.dumps({"subsets": summary, "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()

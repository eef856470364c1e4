"""slmlab-bench: run the benchmarks (all, or those named) and write outputs/bench/<time>.json.

slmlab-bench                          every benchmark
slmlab-bench speechlm_train_step --steps 20
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from slmlab.bench import BENCHMARKS
from slmlab.runs import REPO_ROOT


def repetitions(text: str) -> int:
    """--steps: an integer >= 1 (argparse's `type`)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--steps={text}: allowed: an integer >= 1")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="slmlab-bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--steps",
        type=repetitions,
        default=10,
        help="timed repetitions per candidate (median reported)",
    )
    parser.add_argument("--out", type=Path, default=Path(REPO_ROOT) / "outputs" / "bench")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    rows = []
    for name in args.names or list(BENCHMARKS):
        module, function = BENCHMARKS[name].split(":")
        rows += getattr(importlib.import_module(module), function)(steps=args.steps)
    print(f"{'benchmark':24} {'setting':40} {'ours':>10} {'baseline':>10} {'unit':>8} {'ratio':>7}")
    for row in rows:  # a plain timing has no baseline and no ratio
        baseline = "—" if row["baseline"] is None else f"{row['baseline']:.1f}"
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(
            f"{row['benchmark']:24} {row['setting']:40} {row['ours']:10.1f} {baseline:>10} {row['unit']:>8} "
            f"{ratio:>7}"
        )
        if row.get("summary"):
            print(f"{'':24} {row['summary']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("%Y-%m-%d_%H-%M-%S.json")
    path.write_text(json.dumps(rows, indent=2))
    print(f"ratio = baseline / ours (> 1: ours faster); written to {path}")


if __name__ == "__main__":
    main()

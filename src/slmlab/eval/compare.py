"""slmlab-compare's work: read a sweep's run folders, aggregate each arm over seeds, write the study's report.

A run folder holds `.hydra/config.yaml`, `metrics.json` (training figures, and `eval` from slmlab-eval) and
`tensorboard/` (the validation curves). Outputs in the study folder: `results.csv` (one row per run, then
one per arm with mean and spread; every metric with its 95% interval, `<metric>_ci_low`/`_ci_high`),
`README.md` (question, commands, tables, reading, judge floor), `val_curves.png` and `metrics.png`.

A verdict ("beats its trivial baseline", "A beats B") is made only when a 95% interval says so: the arm's
interval excludes the baseline, or the paired interval of A - B on the same items excludes 0
(slmlab.eval.intervals: bootstrap over test items, and over seeds where there are several).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from slmlab.eval.evaluate import GENERATED, METRICS
from slmlab.eval.intervals import interval, paired_difference

log = logging.getLogger(__name__)

# training figures read from metrics.json: column -> (label, key path)
TRAINING = {
    "parameters": ("parameters", ("parameters",)),
    "train_tokens_per_second": ("train tokens/s", ("train_tokens_per_second",)),
    "peak_memory_mb": ("peak memory (MB)", ("peak_memory_bytes",)),
    "train_minutes": ("train minutes", ("train_seconds",)),
    "test_loss": ("test loss (own units)", ("metrics", "test/loss")),
}
TABLES = {
    "Speech and text generation (judge ASR for speech output)": [
        "asr_wer",
        "asr_cer",
        "tts_wer",
        "tts_cer",
        "resynthesis_wer",
        "resynthesis_ceiling_wer",
        "true_codebook0_wer",
        "style_accuracy",
        "resynthesis_style_accuracy",
        "empty_outputs",
    ],
    "Few-shot prompting (Spirit LM: train examples before each query, the paper's protocol)": [
        "asr_wer_fewshot",
        "asr_cer_fewshot",
        "tts_wer_fewshot",
        "tts_cer_fewshot",
    ],
    "Likelihoods": ["text_ppl", "speech_nats_per_second"],
    "Zero-shot probes (total log-likelihood, and per token)": [
        "lexical_text",
        "lexical_text_per_token",
        "syntactic_text",
        "syntactic_text_per_token",
        "lexical_speech",
        "lexical_speech_per_token",
        "syntactic_speech",
        "syntactic_speech_per_token",
    ],
    # training speed and memory are measured alone, one arm at a time (`slmlab-bench train_cost`); the
    # sweep's in-run figures, taken while two jobs share the machine, stay in results.csv as a log
    "Size and generation cost": ["parameters", "generation_rtf"],
}
# per generated metric, how many outputs were empty or failed (scored as wrong)
EMPTY = {f"{k}_empty": ("eval", "empty_outputs", k) for k in GENERATED}
LABELS = {
    **{k: k for k in METRICS},
    **{k: label for k, (label, _) in TRAINING.items()},
    **{k: k for k in EMPTY},
}


@dataclass
class Run:
    folder: Path
    arm: str
    seed: int
    values: dict[str, float | None]
    baselines: dict
    curve: list[tuple[int, float]] = field(default_factory=list)
    budget: dict = field(default_factory=dict)
    order: float = math.inf  # the arm's `model.report_order`: its row in the tables (then by name)
    items: dict = field(
        default_factory=dict
    )  # metric -> {"ids", "num", "den"} (slmlab.eval.intervals)


@dataclass
class Cell:
    """One figure of an arm: mean and sample standard deviation over its seeds (0 for one), the number of
    seeds, and the 95% interval (None where the runs kept no per-item scores, or for training figures)."""

    mean: float
    spread: float
    seeds: int
    low: float | None = None
    high: float | None = None


def arms_in_order(runs: list[Run]) -> list[str]:
    """The runs' arms, ordered by their configs' `model.report_order`, then by name."""
    order = {r.arm: r.order for r in runs}
    return sorted(order, key=lambda arm: (order[arm], arm))


def _get(record: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def read_run(folder: Path) -> Run:
    """One run folder -> its arm (`csm`, or `csm (recipe)` under regime=recipe), seed, every metric (None
    where the arm has none) and its val/loss curve."""
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    record = json.loads((folder / "metrics.json").read_text())
    values: dict[str, float | None] = {}
    for name, (_, path) in TRAINING.items():
        value = _get(record, path)
        if value is not None and name == "peak_memory_mb":
            value = value / 2**20
        if value is not None and name == "train_minutes":
            value = value / 60
        values[name] = value
    values.update({k: _get(record, ("eval", "metrics", k)) for k in METRICS})
    values.update({k: _get(record, path) for k, path in EMPTY.items()})
    arm = cfg.model.get("name") or cfg.model.task._target_.rsplit(".", 1)[-1]
    if cfg.get("regime", "from_scratch") != "from_scratch":  # each regime is a row of its own
        arm = f"{arm} ({cfg.regime})"
    budget = {
        "steps": OmegaConf.select(cfg, "trainer.max_steps"),
        "batch": OmegaConf.select(cfg, "datamodule.batch_size"),
        "corpus": OmegaConf.select(cfg, "data.preset"),
        **(_get(record, ("eval", "settings")) or {}),
        # the decoding it was scored with: slmlab-eval's record, else (runs evaluated before it kept one) the
        # run's own config
        "generation": _get(record, ("eval", "generation"))
        or OmegaConf.to_container(OmegaConf.create(cfg.model.task.get("generation") or {})),
    }
    return Run(
        folder,
        arm,
        int(cfg.seed),
        values,
        _get(record, ("eval", "baselines")) or {},
        read_curve(folder),
        budget,
        cfg.model.get("report_order", math.inf),
        _get(record, ("eval", "items")) or {},
    )


def read_curve(folder: Path, tag: str = "val/loss") -> list[tuple[int, float]]:
    """(step, value) of a scalar from the run's TensorBoard events (empty when there are none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((folder / "tensorboard").glob("**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            points.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return sorted(points.items())


def find_runs(sweep_dir: Path) -> tuple[list[Run], list[str]]:
    """Every run folder under `sweep_dir` (a Hydra multirun folder, or several), and the folders skipped with
    the reason (no metrics.json: the run failed or is still going)."""
    runs, skipped = [], []
    for config in sorted(Path(sweep_dir).glob("**/.hydra/config.yaml")):
        folder = config.parent.parent
        if not (folder / "metrics.json").is_file():
            skipped.append(f"{folder}: no metrics.json")
            continue
        runs.append(read_run(folder))
    if not runs:
        raise FileNotFoundError(
            f"no finished runs (with .hydra/config.yaml and metrics.json) under {sweep_dir}"
        )
    return runs, skipped


def _items(runs: list[Run], name: str) -> list[dict]:
    return [r.items.get(name) for r in runs]


def aggregate(runs: list[Run]) -> dict[str, dict[str, Cell | None]]:
    """arm -> figure -> its Cell over the arm's seeds, or None (not applicable)."""
    table = {}
    for arm in arms_in_order(runs):
        of_arm = [r for r in runs if r.arm == arm]
        table[arm] = {}
        for name in LABELS:
            scored = [r for r in of_arm if r.values.get(name) is not None]
            values = [r.values[name] for r in scored]
            if not values:
                table[arm][name] = None
                continue
            bounds = interval(name, _items(scored, name)) if name in METRICS else None
            table[arm][name] = Cell(
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else 0.0,
                len(values),
                *(bounds or (None, None)),
            )
    return table


def _digits(name: str) -> int:
    if name in ("train_tokens_per_second", "peak_memory_mb"):
        return 0
    return 1 if name in ("train_minutes", "text_ppl") else 3


def format_cell(name: str, cell: Cell | None) -> str:
    """`mean ± std [95% interval]`: the spread only over several seeds, the interval where one was drawn."""
    if cell is None:
        return "n/a"
    if name == "parameters":
        return f"{cell.mean / 1e6:.2f} M"
    digits = _digits(name)
    text = f"{cell.mean:,.{digits}f}"
    if cell.seeds > 1:
        text += f" ± {cell.spread:,.{digits}f}"
    if cell.low is not None:
        text += f" [{cell.low:,.{digits}f}, {cell.high:,.{digits}f}]"
    return text


def csv_columns() -> list[str]:
    """Every figure, each metric followed by its interval's bounds."""
    columns = []
    for name in LABELS:
        columns += [name, f"{name}_ci_low", f"{name}_ci_high"] if name in METRICS else [name]
    return columns


def write_csv(path: Path, runs: list[Run], table: dict, root: Path) -> None:
    """One row per run (its folder relative to `root`, the project; intervals over its items), then per
    arm the mean with its interval over items and seeds, and the standard deviation over seeds."""

    def row(cells: dict[str, Cell | None], value) -> list:
        out = []
        for name in LABELS:
            cell = cells.get(name)
            out.append("" if cell is None else value(cell))
            if name in METRICS:
                out += ["", ""] if cell is None or cell.low is None else [cell.low, cell.high]
        return out

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "seed", "run", *csv_columns()])
        for r in sorted(runs, key=lambda r: (r.arm, r.seed)):
            cells = {
                name: None
                if r.values.get(name) is None
                else Cell(
                    r.values[name],
                    0.0,
                    1,
                    *(
                        (interval(name, [r.items.get(name)]) if name in METRICS else None)
                        or (None, None)
                    ),
                )
                for name in LABELS
            }
            writer.writerow(
                [r.arm, r.seed, os.path.relpath(r.folder, root), *row(cells, lambda c: c.mean)]
            )
        for arm, cells in table.items():
            n = max((c.seeds for c in cells.values() if c), default=0)
            writer.writerow([arm, f"mean of {n}", "", *row(cells, lambda c: c.mean)])
            spread = {k: c and Cell(c.spread, 0.0, c.seeds) for k, c in cells.items()}
            writer.writerow([arm, f"std of {n}", "", *row(spread, lambda c: c.mean)])


def empty_outputs_cell(cells: dict) -> str:
    """The arm's empty or failed outputs summed over seeds, per metric (`tts_wer 2, style_accuracy 1`);
    0 when there were none, n/a when the arm generates nothing."""
    counted = {k.removesuffix("_empty"): cells[k] for k in EMPTY if cells[k] is not None}
    if not counted:
        return "n/a"
    totals = {k: round(cell.mean * cell.seeds) for k, cell in counted.items()}
    return ", ".join(f"{k} {total}" for k, total in totals.items() if total) or "0"


def markdown_tables(table: dict) -> str:
    headers = {**LABELS, "empty_outputs": "empty or failed outputs (all seeds)"}
    parts = []
    for title, names in TABLES.items():
        parts.append(f"**{title}**\n")
        parts.append("| arm | " + " | ".join(headers[n] for n in names) + " |")
        parts.append("|---" * (len(names) + 1) + "|")
        parts += [
            f"| {arm} | "
            + " | ".join(
                empty_outputs_cell(cells) if n == "empty_outputs" else format_cell(n, cells[n])
                for n in names
            )
            + " |"
            for arm, cells in table.items()
        ]
        parts.append("")
    return "\n".join(parts)


def trivial_baselines(baselines: dict) -> dict[str, float | None]:
    """What each metric must beat without listening or reading: the trivial output's WER/CER, chance for a
    probe, the majority style."""
    trivial = {
        "asr_wer": baselines.get("trivial_wer"),
        "asr_cer": baselines.get("trivial_cer"),
        "tts_wer": baselines.get("trivial_wer"),
        "tts_cer": baselines.get("trivial_cer"),
        "resynthesis_wer": baselines.get("trivial_wer"),
        "style_accuracy": baselines.get("style_majority"),
        "resynthesis_style_accuracy": baselines.get("style_majority"),
    }
    trivial |= {f"{k}_fewshot": trivial[k] for k in ("asr_wer", "asr_cer", "tts_wer", "tts_cer")}
    probes = [n for n in METRICS if n.startswith(("lexical", "syntactic"))]
    return trivial | dict.fromkeys(probes, 0.5)


# metrics whose values do not compare across arms: each arm counts its own speech tokens; generation cost
NOT_ACROSS_ARMS = ("speech_nats_per_second", "generation_rtf")
# metrics the judge ASR scores by listening to the arms' speech: only as good as the judge's own hearing
HEARD_BY_THE_JUDGE = (
    "tts_wer",
    "tts_cer",
    "tts_wer_fewshot",
    "tts_cer_fewshot",
    "resynthesis_wer",
    "resynthesis_ceiling_wer",
    "true_codebook0_wer",
)


def judge_is_deaf(runs: list[Run], baselines: dict) -> str | None:
    """Why no verdict can rest on the judge, or None when it hears: its WER on the real test audio must beat
    the trivial output's, by its 95% interval over those utterances (none without its items: an older run)."""
    judged = next((r.items["judge_wer"] for r in runs if r.items.get("judge_wer")), None)
    trivial = baselines.get("trivial_wer")
    if judged is None or trivial is None:
        return None
    low, high = interval("judge_wer", [judged])
    if high < trivial:
        return None
    return (
        f"the judge does not hear the real test audio better than the trivial output (its WER "
        f"{baselines['judge_wer']:.3f} [{low:.3f}, {high:.3f}] against {trivial:.3f}), so nothing it scores "
        "is judged"
    )


def reading(runs: list[Run], table: dict, baselines: dict) -> list[str]:
    """One line per metric: each arm against the trivial baseline (its 95% interval must exclude it), and
    the best arm against the runner-up (the paired interval of their difference must exclude 0)."""
    trivial = trivial_baselines(baselines)
    deaf = judge_is_deaf(runs, baselines)
    lines = []
    for name in METRICS:
        scored = {arm: cells[name] for arm, cells in table.items() if cells[name] is not None}
        if not scored or name in NOT_ACROSS_ARMS:
            continue
        if deaf and name in HEARD_BY_THE_JUDGE:
            lines.append(f"- **{name}**: not judged: {deaf}.")
            continue
        if name == "resynthesis_ceiling_wer":
            lines.append(resynthesis_loss_line(table, baselines))
            continue
        if name == "true_codebook0_wer":
            lines.append(codebook0_loss_line(table))
            continue
        lower = METRICS[name][1] == "lower"
        ranked = sorted(scored, key=lambda a: scored[a].mean, reverse=not lower)
        parts = [f"best {ranked[0]} {format_cell(name, scored[ranked[0]])}"]
        if len(ranked) > 1:
            parts.append(_versus(name, runs, ranked[0], ranked[1], lower))
        base = trivial.get(name)
        if base is not None:
            parts.append(
                "against the trivial baseline "
                + ", ".join(f"{arm} {_beats(scored[arm], base, lower)}" for arm in ranked)
            )
        head = f"- **{name}**" + (f" (trivial {base:.3f})" if base is not None else "")
        lines.append(f"{head}: " + "; ".join(parts) + ".")
    return lines


def resynthesis_loss_line(table: dict, baselines: dict) -> str:
    """Where each speaking arm's resynthesis loses words: real audio (the judge's WER) -> Griffin-Lim of the
    real mel at the arm's decoder settings (`resynthesis_ceiling_wer`) -> its speech tokens and decoder
    (`resynthesis_wer`)."""
    judge = baselines.get("judge_wer")
    parts = []
    for arm, cells in table.items():
        ceiling, resynthesis = cells.get("resynthesis_ceiling_wer"), cells.get("resynthesis_wer")
        if ceiling is None or resynthesis is None:
            continue
        vocoder = f"{ceiling.mean - judge:+.3f} from Griffin-Lim, " if judge is not None else ""
        parts.append(
            f"{arm} {resynthesis.mean:.3f} against its ceiling {ceiling.mean:.3f} ({vocoder}"
            f"{resynthesis.mean - ceiling.mean:+.3f} from its speech tokens and their decoder)"
        )
    real = f" (the judge on real audio: {judge:.3f})" if judge is not None else ""
    return f"- **resynthesis_wer against resynthesis_ceiling_wer**{real}: " + "; ".join(parts) + "."


def codebook0_loss_line(table: dict) -> str:
    """Where an arm's TTS loses words between its two stages (CSM): from text (`tts_wer`) -> with each test
    frame's own codebook 0 given and the decoder sampling the others (`true_codebook0_wer`) -> with every
    codebook given (`resynthesis_wer`)."""
    parts = []
    for arm, cells in table.items():
        tts, given, resynthesis = (
            cells.get(k) for k in ("tts_wer", "true_codebook0_wer", "resynthesis_wer")
        )
        if tts is None or given is None or resynthesis is None:
            continue
        parts.append(
            f"{arm} {tts.mean:.3f} from text, {given.mean:.3f} with the true codebook 0 "
            f"({tts.mean - given.mean:+.3f} from its backbone's codebook 0), {resynthesis.mean:.3f} with "
            f"every true codebook ({given.mean - resynthesis.mean:+.3f} from its decoder's other codebooks)"
        )
    return "- **tts_wer against true_codebook0_wer and resynthesis_wer**: " + "; ".join(parts) + "."


def _beats(cell: Cell, base: float, lower: bool) -> str:
    if cell.low is None:
        return "has no interval (rerun slmlab-eval)"
    clear = cell.high < base if lower else cell.low > base
    return "beats it" if clear else "does not clearly beat it"


def _paired(name: str, runs: list[Run], a: str, b: str) -> tuple[float, float, float] | None:
    """Arm `a` minus arm `b` on `name`, with its 95% interval: a paired bootstrap on the items both were
    scored on (None when they share none)."""
    of = {
        arm: [r for r in runs if r.arm == arm and r.values.get(name) is not None] for arm in (a, b)
    }
    return paired_difference(name, _items(of[a], name), _items(of[b], name))


def _versus(name: str, runs: list[Run], best: str, second: str, lower: bool) -> str:
    """Whether `best` beats `second` on `name`: a paired bootstrap on the items both were scored on."""
    compared = _paired(name, runs, best, second)
    if compared is None:
        return f"against {second}: no paired interval (no shared items)"
    difference, low, high = compared
    clear = high < 0 if lower else low > 0
    digits = _digits(name)
    return (
        f"{'beats' if clear else 'does not clearly beat'} {second} "
        f"(difference {difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}])"
    )


def pretraining_effect(runs: list[Run], table: dict, baselines: dict) -> list[str]:
    """One line per arm trained in both regimes: metric by metric, its `(recipe)` row minus its from-scratch
    row (a paired bootstrap on the same items), called better or worse only where the 95% interval of the
    difference excludes 0; the metrics a deaf judge scores are left out (see `judge_is_deaf`)."""
    deaf = judge_is_deaf(runs, baselines)
    lines = []
    for arm in table:
        recipe = f"{arm} (recipe)"
        if recipe not in table:
            continue
        better, worse, unclear = [], [], 0
        for name, (_, direction) in METRICS.items():
            if table[arm][name] is None or table[recipe][name] is None:
                continue
            # resynthesis measures the speech tokens and their decoder, which both regimes share
            if name in NOT_ACROSS_ARMS or name.startswith("resynthesis"):
                continue
            if deaf and name in HEARD_BY_THE_JUDGE:
                continue
            compared = _paired(name, runs, recipe, arm)
            if compared is None:
                continue
            difference, low, high = compared
            digits = _digits(name)
            figure = f"{name} {difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
            if low > 0 or high < 0:
                gain = difference < 0 if direction == "lower" else difference > 0
                (better if gain else worse).append(figure)
            else:
                unclear += 1
        lines.append(
            f"- **{arm}**: the recipe is better on "
            + (", ".join(better) or "no metric")
            + "; worse on "
            + (", ".join(worse) or "no metric")
            + f"; no clear difference on {unclear} other{'s' if unclear != 1 else ''}."
        )
    return lines


def plot_curves(path: Path, runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms_in_order(runs)
    figure, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3), squeeze=False)
    for axis, arm in zip(axes[0], arms):
        for r in (r for r in runs if r.arm == arm):
            if r.curve:
                axis.plot(*zip(*r.curve), marker="o", label=f"seed {r.seed}")
        axis.set_title(arm, fontsize=10)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("val/loss (own units)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_metrics(path: Path, table: dict, baselines: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in METRICS if any(cells[n] for cells in table.values())]
    trivial = trivial_baselines(baselines)
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    arms = list(table)
    for axis, name in zip(axes.flat, names):
        cells = [table[a][name] for a in arms]
        means = [c.mean if c else 0.0 for c in cells]
        errors = [  # the 95% interval, as distances below and above the mean
            [c.mean - c.low if c and c.low is not None else 0.0 for c in cells],
            [c.high - c.mean if c and c.low is not None else 0.0 for c in cells],
        ]
        bars = axis.bar(range(len(arms)), means, yerr=errors, capsize=3, color="tab:blue")
        for bar, arm in zip(bars, arms):
            if table[arm][name] is None:
                bar.set_alpha(0)
                axis.text(
                    bar.get_x() + bar.get_width() / 2,
                    0,
                    "n/a",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        baseline = trivial.get(name)
        if baseline is not None:
            axis.axhline(baseline, color="tab:red", linestyle="--", linewidth=1)
        floor = (
            baselines.get("judge_" + name.removesuffix("_fewshot").split("_")[-1])
            if name.startswith(("tts", "resynthesis"))
            else None
        )
        if floor is not None:
            axis.axhline(floor, color="tab:green", linestyle=":", linewidth=1)
        axis.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=7)
        axis.set_title(name, fontsize=9)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.suptitle(
        "mean and 95% interval (bootstrap over test items and seeds); red dashes: the trivial "
        "baseline (chance, majority style, empty or constant output); green dots: the judge's "
        "WER/CER on real audio",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def budget_line(runs: list[Run]) -> str:
    """The training and evaluation budget as the runs' configs state it (and whether the arms share it)."""
    keys = (
        "steps",
        "batch",
        "corpus",
        "utterances",
        "style_prompts",
        "probe_pairs",
    )
    values = {k: sorted({str(r.budget.get(k)) for r in runs}) for k in keys}
    values["shots"] = sorted({str((r.budget.get("few_shot") or {}).get("shots")) for r in runs})
    text = {k: " / ".join(v) for k, v in values.items()}
    shared = all(len(v) == 1 for v in values.values())
    return (
        f"Budget, from the runs' configs ({'the same for every arm' if shared else 'NOT the same for every arm'}): "
        f"{text['steps']} optimisation steps of {text['batch']} utterances on the `{text['corpus']}` corpus; the "
        f"checkpoint with the best `val/loss` is evaluated on {text['utterances']} test utterances (ASR, TTS, "
        f"likelihoods), {text['style_prompts']} style prompts and {text['probe_pairs'].replace('None', 'all')} "
        f"pairs per probe; Spirit LM's few-shot prompts hold {text['shots'].replace('None', 'no')} train "
        "examples per query."
    )


def decoding_line(runs: list[Run]) -> str:
    """Each arm's decoding settings as it was evaluated (its seeds' distinct settings, joined by ` / `)."""
    by_arm: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: (r.order, r.arm)):
        settings = ", ".join(
            f"{k} {v}" for k, v in sorted((run.budget.get("generation") or {}).items())
        )
        seen = by_arm.setdefault(run.arm, [])
        if settings and settings not in seen:
            seen.append(settings)
    described = [f"{arm}: {' / '.join(v)}" for arm, v in by_arm.items() if v]
    return "Decoding, as each arm was evaluated: " + ("; ".join(described) or "none recorded") + "."


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path,
    question: str,
    commands: list[str],
    project_readme: str | Path | None = None,
    root: str | Path = ".",
) -> dict:
    """Aggregate the runs under `sweep_dir` into `out_dir` (and its tables into `project_readme`, between
    markers); return the aggregated table. results.csv names run folders relative to `root`."""
    runs, skipped = find_runs(Path(sweep_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = aggregate(runs)
    baselines = next((r.baselines for r in runs if r.baselines), {})
    write_csv(out_dir / "results.csv", runs, table, Path(root))
    plot_curves(out_dir / "val_curves.png", runs)
    plot_metrics(out_dir / "metrics.png", table, baselines)
    seeds = sorted({r.seed for r in runs})
    floor = (
        f"The judge ASR's WER on the real audio of the {baselines.get('judge_utterances', 'evaluated')} test "
        f"utterances the arms are scored on is **{baselines['judge_wer']:.3f}** (CER "
        f"{baselines.get('judge_cer', float('nan')):.3f}): the error of the measuring instrument itself, which "
        "speech outputs are not expected to beat. "
        if "judge_wer" in baselines
        else "No run was evaluated. "
    )
    deaf = judge_is_deaf(runs, baselines)
    if deaf:
        floor += f"**But {deaf} ({', '.join(HEARD_BY_THE_JUDGE)}).** "
    style = (
        f"The style classifier is right on {baselines['style_classifier_accuracy']:.3f} of real test crops "
        f"(chance {baselines.get('style_chance', 0):.3f}, majority {baselines.get('style_majority', 0):.3f}). "
        if "style_classifier_accuracy" in baselines
        else ""
    )
    trivial = (
        f"The trivial outputs (empty, the most frequent word, or a random training sentence, for every "
        f"utterance) score at best WER {baselines['trivial_wer']:.3f} ({baselines.get('trivial_wer_output', '')}) and "
        f"CER {baselines.get('trivial_cer', 1.0):.3f} ({baselines.get('trivial_cer_output', '')})."
        if "trivial_wer" in baselines
        else ""
    )
    effect = pretraining_effect(runs, table, baselines)
    effect_section = (
        [
            "## The effect of pretraining",
            "",
            "Each arm trained in both regimes, its `(recipe)` row minus its from-scratch row on the same test "
            "items (difference [95% paired interval]; better and worse in the metric's own direction):",
            "",
            *effect,
            "",
        ]
        if effect
        else []
    )
    text = "\n".join(
        [
            f"# {out_dir.name}",
            "",
            "## Question",
            "",
            question.strip(),
            "",
            "## Commands",
            "",
            "```",
            *commands,
            "```",
            "",
            budget_line(runs),
            "",
            decoding_line(runs),
            "",
            f"## Results ({len(runs)} runs; seeds {', '.join(map(str, seeds))}; "
            "mean ± std over seeds where more than one, and [the 95% interval] over test items and seeds)",
            "",
            markdown_tables(table),
            "n/a: the arm cannot produce the metric (it models no such input or output), not a zero. "
            "WER/CER: lower is better; probes and style: accuracy, higher is better. Read across arms with care: "
            "`speech_nats_per_second` counts each arm's own speech tokens (CSM: every code of every codec frame and "
            "the end frame; Spirit LM: de-duplicated units, and for Expressive pitch and style tokens); "
            "`style_accuracy` is a speech continuation for Spirit LM and a new sentence spoken with the prompt as "
            "context for CSM. Training speed and memory are not compared here: the sweep runs two jobs at "
            "a time, so its in-run figures (in `results.csv`: train tokens/s, peak memory, minutes) are a "
            "log only; `slmlab-bench train_cost` measures each arm alone.",
            "",
            "![validation curves](val_curves.png)",
            "",
            "![metrics](metrics.png)",
            "",
            "## Judge floor and trivial baselines",
            "",
            floor + style + trivial,
            "",
            "## Reading",
            "",
            *reading(runs, table, baselines),
            "",
            *effect_section,
            *([f"Skipped folders: {', '.join(skipped)}", ""] if skipped else []),
            "Every figure is in `results.csv` (one row per run, then the mean and std per arm; each metric "
            "with its 95% interval in `<metric>_ci_low` and `<metric>_ci_high`). A verdict is made only "
            "where an interval says so: an arm beats its trivial baseline when its interval excludes it, "
            "and the best arm beats the runner-up when the paired interval of their difference on the "
            "same items excludes 0.",
            "",
        ]
    )
    (out_dir / "README.md").write_text(text)
    log.info("report for %d runs (%d skipped) -> %s", len(runs), len(skipped), out_dir)
    if project_readme is not None:
        copy_into_readme(
            Path(project_readme),
            out_dir,
            "\n".join([markdown_tables(table), floor + trivial, "", *effect_section]),
        )
    return table


def copy_into_readme(readme: Path, out_dir: Path, tables: str) -> None:
    """Replace what lies between `<!-- <study>:start -->` and `<!-- <study>:end -->` in the project README
    with the report's tables (nothing happens when the markers are absent)."""
    start, end = f"<!-- {out_dir.name}:start -->", f"<!-- {out_dir.name}:end -->"
    text = readme.read_text() if readme.is_file() else ""
    if start not in text or end not in text:
        log.warning("%s has no %s ... %s markers; its table was not updated", readme, start, end)
        return
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{tables.strip()}\n{end}{rest.split(end, 1)[1]}")
    log.info("copied the tables into %s", readme)

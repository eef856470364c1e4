"""Real corpora behind the interface of `SyntheticCorpus`: `prepare()`, `manifest(split)`, `root`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import soundfile as sf

from slmlab.data.manifest import ManifestReport, Utterance, write_manifest

log = logging.getLogger(__name__)


def read_librispeech(folder: str | Path) -> tuple[list[Utterance], ManifestReport]:
    """Utterances of a LibriSpeech-style folder: SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt lines
    `UTTERANCE_ID TRANSCRIPT` next to UTTERANCE_ID.flac, transcripts lower-cased. A transcript line
    without its flac (logged by file and line) and a flac no transcript lists are skipped and counted
    in the report; the manifest validation (`read_manifest`) checks the rest."""
    folder = Path(folder)
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(
            f"no SPEAKER/CHAPTER/*.trans.txt under {folder}: not a LibriSpeech-style folder"
        )
    report = ManifestReport(str(folder))
    records, listed = [], set()
    for transcript in transcripts:
        speaker = transcript.parent.parent.name
        for n, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            report.total += 1
            utterance_id, _, text = line.strip().partition(" ")
            audio = transcript.parent / f"{utterance_id}.flac"
            listed.add(audio)
            if not audio.is_file():
                report.add(
                    n, utterance_id, "audio_missing", f"no {audio}", "skipped", str(transcript)
                )
                continue
            try:
                duration = sf.info(str(audio)).duration
            except RuntimeError as err:  # soundfile's LibsndfileError: not audio it can read
                report.add(
                    n, utterance_id, "audio_unreadable", str(err), "skipped", str(transcript)
                )
                continue
            records.append(
                Utterance(
                    utterance_id,
                    str(audio.resolve()),
                    duration,
                    text.lower(),
                    speaker,
                    extra={"source": f"{transcript}:{n}"},
                )
            )
    for audio in sorted(set(folder.glob("*/*/*.flac")) - listed):
        report.total += 1
        detail = f"not listed in any {audio.parent}/*.trans.txt"
        report.add(None, audio.stem, "no_transcript", detail, "skipped", str(audio))
    report.kept = len(records)
    return records, report


class LibriSpeechCorpus:
    """`data=librispeech`: subsets of a downloaded LibriSpeech (e.g. train-clean-100, dev-clean,
    test-clean) turned into manifests under `root` once."""

    def __init__(self, source: str, root: str, splits: dict[str, list[str]]) -> None:
        self.source, self.root, self.splits = (
            Path(source),
            Path(root),
            {k: list(v) for k, v in splits.items()},
        )

    def manifest(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"

    def prepare(self) -> dict:
        """Write each split's manifest once; returns the reading reports of the subsets read now."""
        read = {}
        for split, subsets in self.splits.items():
            if self.manifest(split).is_file():
                continue
            records = []
            for subset in subsets:
                subset_records, report = read_librispeech(self.source / subset)
                records += subset_records
                read[subset] = report.summary()
            write_manifest(self.manifest(split), records, relative_paths=False)
            log.info(
                "librispeech %s: %d utterances from %s -> %s (%s)",
                split,
                len(records),
                subsets,
                self.manifest(split),
                json.dumps({subset: read[subset] for subset in subsets}),
            )
        return {"source": str(self.source), "splits": self.splits, "read": read}


class ManifestCorpus:
    """`data=manifest`: your own JSONL manifests, one per split; `root` holds tokenizers and caches."""

    def __init__(self, train: str, val: str, test: str, root: str) -> None:
        self.paths = {"train": Path(train), "val": Path(val), "test": Path(test)}
        self.root = Path(root)

    def manifest(self, split: str) -> Path:
        return self.paths[split]

    def prepare(self) -> dict:
        missing = [f"{split}={path}" for split, path in self.paths.items() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"data=manifest: manifest files not found: {', '.join(missing)}"
            )
        return {split: str(path) for split, path in self.paths.items()}

"""Real corpora behind the interface of `SyntheticCorpus`: `prepare()`, `manifest(split)`, `root`."""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf

from slmlab.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)


def read_librispeech(folder: str | Path) -> list[Utterance]:
    """Utterances of a LibriSpeech-style folder: SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt lines
    `UTTERANCE_ID TRANSCRIPT` next to UTTERANCE_ID.flac. Transcripts are lower-cased; a listed
    utterance without its audio is kept and reported by the manifest validation, not dropped here."""
    folder = Path(folder)
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(
            f"no SPEAKER/CHAPTER/*.trans.txt under {folder}: not a LibriSpeech-style folder"
        )
    records = []
    for transcript in transcripts:
        speaker = transcript.parent.parent.name
        for n, line in enumerate(transcript.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            audio = transcript.parent / f"{utterance_id}.flac"
            duration = sf.info(str(audio)).duration if audio.is_file() else 0.0
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
    return records


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
        for split, subsets in self.splits.items():
            if self.manifest(split).is_file():
                continue
            records = [r for subset in subsets for r in read_librispeech(self.source / subset)]
            write_manifest(self.manifest(split), records, relative_paths=False)
            log.info(
                "librispeech %s: %d utterances from %s -> %s",
                split,
                len(records),
                subsets,
                self.manifest(split),
            )
        return {"source": str(self.source), "splits": self.splits}


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

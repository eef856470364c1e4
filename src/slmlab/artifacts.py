"""Fit once, cache, publish atomically: the one way every fitted artifact is stored.

Every tokenizer, codec, vocoder, judge and classifier fitted on a corpus, the token cache and the
synthetic corpus itself are made the same way:

    inputs = manifest_fingerprints(corpus, "train")  # {"train": sha1 of train.jsonl}
    folder = artifact_dir(corpus.root, "bpe", "bpe512", settings, inputs)
    tokenizer = fit_once(folder, fit, TextTokenizer.from_pretrained, {"settings": ..., "inputs": ...})

`fit(tmp)` fits and writes into the temporary folder `tmp`; `load(folder)` reads a published one.

- **One name**: `<root>/artifacts/<kind>/<name>-<key>/`, where `key` is a short hash of the settings
  (a JSON-able dict) and of the inputs' fingerprints (e.g. the sha1 of each manifest file, a
  tokenizer's `fingerprint()`); `name` only helps a reader. `artifact.json` inside records both.
- **A lock**: `<dest>.lock`, held with `fcntl.flock` (in place of a lock library such as `filelock`),
  so that a second process waits for the first and then reads its result instead of fitting again.
  flock works across the nodes of a cluster on NFSv4 (and on Lustre mounted with `flock`).
- **A unique temporary folder** next to `dest` (`tempfile.mkdtemp` in the same parent), into which
  `fit` writes, so that concurrent jobs never share a half-written folder.
- **An atomic publish**: `os.rename` of the temporary folder onto `dest`, on the same filesystem. A
  folder is published once `dest/artifact.json` exists; if `fit` fails, its temporary folder is
  removed and nothing is published.

This replaces the fixed `<folder>.partial` names and per-fitter folder schemes that BPE, speech units,
unit vocoder, built-in codec, judge ASR, style classifier, token cache and corpus each had.

**Safe loading.** Every tensor file slmlab reads (fitted artifacts, the token cache, Lightning
checkpoints) goes through `load_tensors`: `torch.load(weights_only=True)`, which unpickles tensors and
plain containers only, never code. A file that is truncated, corrupt or holds other objects raises
`UnreadableFileError`, naming the file, the reason and what to do. A published artifact that cannot be
read is an error (delete its folder to fit it again) unless `fit_once(..., rebuild_unreadable=True)`
(the token cache): then it is rebuilt, with a warning naming the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from slmlab.data.manifest import RecordPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
RECORD = (
    "artifact.json"  # written last into the temporary folder: its presence marks `dest` published
)


def fingerprint(data: bytes) -> str:
    """A short hex digest of `data` (sha1, 16 hex digits)."""
    return hashlib.sha1(data).hexdigest()[:16]


def manifest_fingerprints(corpus, *splits: str) -> dict[str, str]:
    """{split: fingerprint of its manifest file's bytes}, and of the record policy that decides which of
    their records are read: the inputs of an artifact fitted on them."""
    policy = json.dumps(RecordPolicy.of(corpus).model_dump(), sort_keys=True)
    return {
        **{split: fingerprint(Path(corpus.manifest(split)).read_bytes()) for split in splits},
        "record_policy": fingerprint(policy.encode()),
    }


def artifact_key(settings: dict, inputs: dict) -> str:
    """12 hex digits that change whenever a setting or an input fingerprint does (key order aside)."""
    record = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True)
    return fingerprint(record.encode())[:12]


def artifact_dir(root: str | Path, kind: str, name: str, settings: dict, inputs: dict) -> Path:
    """`<root>/artifacts/<kind>/<name>-<key>`: where the artifact of these settings and inputs lives."""
    return Path(root) / "artifacts" / kind / f"{name}-{artifact_key(settings, inputs)}"


def is_published(dest: Path) -> bool:
    """Whether `dest` is whole: its record is written last, before the rename."""
    return (dest / RECORD).is_file()


class UnreadableFileError(ValueError):
    """A file that exists but cannot be loaded: truncated, corrupt, or holding objects that safe loading
    refuses. `path` and `reason` say which and why; the message adds what to do."""

    def __init__(self, path: str | Path, reason: str, what_to_do: str = "") -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} {reason}" + (f"; {what_to_do}" if what_to_do else ""))


@contextmanager
def reading(path: str | Path, what_to_do: str = "") -> Iterator[None]:
    """Turn an error raised while parsing `path` into an `UnreadableFileError` naming it. A missing file,
    a folder or no permission pass unchanged: the file is absent, not damaged (torch's reader raises
    other OSErrors, e.g. EINVAL, on some truncated files)."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnreadableFileError):
        raise
    except Exception as error:
        raise UnreadableFileError(path, _why_unreadable(error), what_to_do) from error


def _why_unreadable(error: Exception) -> str:
    """The reason in a few words, with the first line of torch's explanation."""
    message = str(error)
    if "Weights only load failed" in message:  # torch names the refused class on this line
        detail = next((line for line in message.splitlines() if "WeightsUnpickler" in line), "")
        detail = detail.split("WeightsUnpickler error:")[-1].strip().split(". ")[0]
        return f"holds objects that torch.load(weights_only=True) refuses to unpickle ({detail})"
    first_line = message.strip().splitlines()[0] if message.strip() else "no data"
    return f"is truncated or corrupt ({type(error).__name__}: {first_line})"


def load_tensors(
    path: str | Path, what_to_do: str = "", map_location="cpu", mmap: bool = False
) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers (dict, list, str, numbers),
    never pickled code; an `UnreadableFileError` naming `path` and `what_to_do` if it cannot be read.
    `mmap=True` maps the tensors' bytes instead of reading them (a cheap check of a large file)."""
    import torch  # here, not at the top: fit_once alone (e.g. the corpus) does not need torch

    with reading(path, what_to_do):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def load_json(path: str | Path, what_to_do: str = "") -> Any:
    """The JSON in `path`; an `UnreadableFileError` naming it if it does not parse."""
    with reading(path, what_to_do):
        return json.loads(Path(path).read_text())


CHECKPOINT_ADVICE = (
    "delete it and use another checkpoint of the run (last.ckpt or step*.ckpt in the same folder)"
)


def check_checkpoint(path: str | Path) -> None:
    """Raise `UnreadableFileError` unless the Lightning checkpoint at `path` loads with weights_only=True
    (its tensors memory-mapped, not read): run before resuming from it or testing it."""
    load_tensors(path, CHECKPOINT_ADVICE, mmap=True)


def fit_once(
    dest: str | Path,
    fit: Callable[[Path], T | None],
    load: Callable[[Path], T],
    record: dict | None = None,
    rebuild_unreadable: bool = False,
) -> T:
    """The artifact at `dest`, fitted by the first caller only (across processes).

    fit(tmp) writes the artifact's files into `tmp`, an empty folder next to `dest`, and may return the
    object it fitted, which is then returned as is; otherwise, and whenever `dest` was published already
    (by an earlier call or by the process this one waited for), `load(dest)` is returned. `record` (a
    JSON-able dict, e.g. the settings and the input fingerprints) is written to `dest/artifact.json`.
    When `load` raises `UnreadableFileError`, `dest` is fitted again (with a warning) if
    `rebuild_unreadable` (a cache); otherwise the error says to delete `dest`.
    """
    dest = Path(dest)
    if is_published(dest):
        try:
            return _load_published(dest, load)
        except UnreadableFileError:
            if not rebuild_unreadable:
                raise
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if is_published(dest):  # the process we waited for fitted it (or it is unreadable)
            try:
                return _load_published(dest, load)
            except UnreadableFileError as error:
                if not rebuild_unreadable:
                    raise
                log.warning("%s %s: rebuilding %s", error.path, error.reason, dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            tmp.chmod(
                dest.parent.stat().st_mode & 0o777
            )  # mkdtemp's 0700 would hide it from others
            fitted = fit(tmp)
            (tmp / RECORD).write_text(json.dumps(record or {}, indent=2, sort_keys=True) + "\n")
            if dest.exists():  # a folder that was never published (e.g. a corpus root made by hand)
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("published %s", dest)
    return load(dest) if fitted is None else fitted


def _load_published(dest: Path, load: Callable[[Path], T]) -> T:
    """load(dest), its `UnreadableFileError` telling what to do with the artifact's folder."""
    try:
        return load(dest)
    except UnreadableFileError as error:
        advice = (
            f"delete {dest} to fit it again (runs made with the old fit may not match a new one)"
        )
        raise UnreadableFileError(error.path, error.reason, advice) from error


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<dest>.lock` (created if missing, and never removed: removing it would
    let a third process lock a new file while a second still holds the old one)."""
    with open(dest.with_name(dest.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to publish %s", dest)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock

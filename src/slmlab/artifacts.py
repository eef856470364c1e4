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
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
RECORD = (
    "artifact.json"  # written last into the temporary folder: its presence marks `dest` published
)


def fingerprint(data: bytes) -> str:
    """A short hex digest of `data` (sha1, 16 hex digits)."""
    return hashlib.sha1(data).hexdigest()[:16]


def manifest_fingerprints(corpus, *splits: str) -> dict[str, str]:
    """{split: fingerprint of its manifest file's bytes}: the inputs of an artifact fitted on them."""
    return {split: fingerprint(Path(corpus.manifest(split)).read_bytes()) for split in splits}


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


def fit_once(
    dest: str | Path,
    fit: Callable[[Path], T | None],
    load: Callable[[Path], T],
    record: dict | None = None,
) -> T:
    """The artifact at `dest`, fitted by the first caller only (across processes).

    fit(tmp) writes the artifact's files into `tmp`, an empty folder next to `dest`, and may return the
    object it fitted, which is then returned as is; otherwise, and whenever `dest` was published already
    (by an earlier call or by the process this one waited for), `load(dest)` is returned. `record` (a
    JSON-able dict, e.g. the settings and the input fingerprints) is written to `dest/artifact.json`.
    """
    dest = Path(dest)
    if is_published(dest):
        return load(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if is_published(dest):  # the process we waited for fitted it
            return load(dest)
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

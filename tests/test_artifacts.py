"""artifacts.py: one key per settings and inputs, one fit across processes, nothing half-published."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slmlab.artifacts import UnreadableFileError, artifact_dir, fit_once, load_json, load_tensors

# A process that waits for the other one (a barrier of files), fits `dest` once with a slow fit that
# counts its calls in `calls`, then prints what it got back: the text of the published `value.txt`.
FIT_SLOWLY = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from slmlab.artifacts import fit_once

    dest, calls, barrier = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)

    def fit(tmp):
        with open(calls, "a") as f:
            f.write("fit\\n")
        time.sleep(2.0)  # long enough for the other process to arrive while this one fits
        (tmp / "value.txt").write_text("fitted")

    print(fit_once(dest, fit, lambda folder: (folder / "value.txt").read_text(), {"n": 1}))
    """
)


def leftovers(parent: Path, dest: Path) -> list[str]:
    """What lies next to `dest` besides `dest` and its lock file (i.e. temporary folders)."""
    return sorted(
        p.name for p in parent.iterdir() if p.name not in {dest.name, dest.name + ".lock"}
    )


def test_two_processes_fit_once_and_read_the_same_artifact(tmp_path):
    dest, calls, barrier = (
        tmp_path / "artifacts" / "toy" / "value-0123",
        tmp_path / "calls",
        tmp_path / "go",
    )
    barrier.mkdir()
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", FIT_SLOWLY, str(dest), str(calls), str(barrier)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=120)[0].strip() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0]
    assert calls.read_text().splitlines() == ["fit"]  # the second process waited and read
    assert outputs == ["fitted", "fitted"]
    assert json.loads((dest / "artifact.json").read_text()) == {"n": 1}
    assert leftovers(dest.parent, dest) == []


def test_a_failed_fit_publishes_nothing_and_the_next_call_fits_again(tmp_path):
    dest, calls = tmp_path / "value-0123", []

    def failing(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        fit_once(dest, failing, lambda folder: "loaded")
    assert not dest.exists() and not calls[0].exists() and leftovers(tmp_path, dest) == []

    def fit(tmp: Path) -> str:
        calls.append(tmp)
        (tmp / "value.txt").write_text("whole")
        return "fitted"

    def load(folder: Path) -> str:
        return (folder / "value.txt").read_text()

    assert fit_once(dest, fit, load) == "fitted"  # this call fitted: its own result
    assert fit_once(dest, fit, load) == "whole"  # published: read back, not fitted again
    assert len(calls) == 2 and leftovers(tmp_path, dest) == []


def test_the_key_follows_the_settings_and_the_inputs(tmp_path):
    settings, inputs = {"vocab_size": 512, "mel": {"n_mels": 80}}, {"train": "ab12"}
    folder = artifact_dir(tmp_path, "bpe", "bpe512", settings, inputs)
    assert folder.parent == tmp_path / "artifacts" / "bpe" and folder.name.startswith("bpe512-")
    reordered = {"mel": {"n_mels": 80}, "vocab_size": 512}
    assert artifact_dir(tmp_path, "bpe", "bpe512", reordered, dict(inputs)) == folder
    others = [
        artifact_dir(tmp_path, "bpe", "bpe512", {**settings, "vocab_size": 400}, inputs),
        artifact_dir(tmp_path, "bpe", "bpe512", {**settings, "mel": {"n_mels": 40}}, inputs),
        artifact_dir(tmp_path, "bpe", "bpe512", settings, {"train": "cd34"}),
        artifact_dir(tmp_path, "bpe", "bpe512", settings, {**inputs, "test": "ef56"}),
    ]
    assert len({folder, *others}) == 5


def test_an_unreadable_artifact_is_an_error_naming_its_folder_unless_it_is_a_cache(
    tmp_path, caplog
):
    dest, fits = tmp_path / "centroids-0123", []

    def fit(tmp: Path) -> None:
        fits.append(tmp)
        torch.save({"centroids": torch.arange(6.0).reshape(3, 2)}, tmp / "centroids.pt")

    def load(folder: Path) -> torch.Tensor:
        return load_tensors(folder / "centroids.pt")["centroids"]

    fitted = fit_once(dest, fit, load)
    (dest / "centroids.pt").write_bytes((dest / "centroids.pt").read_bytes()[:100])
    with pytest.raises(UnreadableFileError) as error:
        fit_once(dest, fit, load)
    assert str(error.value).startswith(f"{dest / 'centroids.pt'} is truncated or corrupt (")
    assert str(error.value).endswith(
        f"; delete {dest} to fit it again (runs made with the old fit may not match a new one)"
    )
    assert len(fits) == 1  # a fitted artifact is never replaced behind the user's back

    with caplog.at_level(logging.WARNING, logger="slmlab.artifacts"):
        assert torch.equal(fit_once(dest, fit, load, rebuild_unreadable=True), fitted)
    assert len(fits) == 2 and torch.equal(load(dest), fitted)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"{dest / 'centroids.pt'} is truncated or corrupt (")
    assert warning.endswith(f": rebuilding {dest}")
    assert leftovers(tmp_path, dest) == []


def test_a_json_file_that_does_not_parse_is_named(tmp_path):
    path = tmp_path / "codec.json"
    path.write_text('{"num_codebooks": 8, "cardin')
    with pytest.raises(UnreadableFileError, match="refit it") as error:
        load_json(path, "refit it")
    assert str(error.value).startswith(f"{path} is truncated or corrupt (JSONDecodeError: ")
    with pytest.raises(FileNotFoundError):  # absent is not damaged
        load_json(tmp_path / "absent.json")

"""Every pinned package installs at its pinned version and imports together."""

import importlib
import importlib.metadata as md
import re

import tomllib

from slmlab.runs import REPO_ROOT

IMPORT_NAMES = {
    "hydra-core": "hydra",
    "hydra-submitit-launcher": "hydra_plugins.hydra_submitit_launcher",
    "hydra-joblib-launcher": "hydra_plugins.hydra_joblib_launcher",
    "espeakng-loader": "espeakng_loader",
    "lightning": "lightning.pytorch",
}


def pins() -> dict[str, str]:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", d).groups() for d in deps)


def test_every_pinned_package_is_installed_at_its_pin():
    wrong = {
        name: (version, md.version(name))
        for name, version in pins().items()
        if md.version(name).split("+")[0] != version
    }
    assert not wrong, f"installed versions differ from pyproject pins: {wrong}"


def test_every_pinned_package_imports():
    for name in pins():
        importlib.import_module(IMPORT_NAMES.get(name, name.replace("-", "_")))


def test_torchaudio_matches_torch():
    import torch
    import torchaudio

    assert torch.__version__.split("+")[0] == torchaudio.__version__.split("+")[0]


def test_only_torchaos_extension_notice_is_silenced(caplog):
    import logging

    import slmlab  # noqa: F401  (installs the filter)

    logger = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING, logger="torchao"):
        logger.warning("Skipping import of cpp extensions due to incompatible torch version 2.9.1")
        logger.warning("another torchao warning")
    assert [r.getMessage() for r in caplog.records] == ["another torchao warning"]

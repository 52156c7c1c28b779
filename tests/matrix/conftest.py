"""The matrix suite runs under one torchmetrics release (see compat_matrix.yaml)."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _matrix() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())


@pytest.fixture(scope="session")
def release() -> dict:
    """This release's entry in compat_matrix.yaml."""
    installed = importlib.metadata.version("torchmetrics")
    expected = os.environ.get("SSIM_PATCH_EXPECT_RELEASE")
    if expected and expected != installed:
        pytest.fail(
            f"the matrix asked for torchmetrics {expected} but {installed} is imported", pytrace=False
        )
    for entry in _matrix()["releases"]:
        if entry["version"] == installed:
            return entry
    pytest.skip(f"torchmetrics {installed} is not pinned in compat_matrix.yaml")


@pytest.fixture(autouse=True)
def _unpatched_around_each_test(patch_reverted):
    """Each test starts unpatched; the state found before it (say, the plugin's) comes back after."""

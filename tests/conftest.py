"""Shared test fixtures: the datasets in ../shared/data (or $FACE_DATA_DIR), and a private cache."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.http_fixtures"]  # the loopback HTTP server fixture, http_server

from utils.paths import data_dir, lfw_dir  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory) -> Path:
    """$FACE_CACHE_DIR for the whole session (and the scripts tests start): aligned faces and
    descriptors go to a temporary folder, never into the repository's cache/."""
    path = tmp_path_factory.mktemp("face_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_dir()
    assert root.is_dir(), f"the shared datasets are missing: {root} (set FACE_DATA_DIR)"
    return root


@pytest.fixture(scope="session")
def lfw_root(shared_data) -> Path:
    return lfw_dir()


@pytest.fixture()
def ctrl_c_delivered():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt in this process during the test, and the processes it
    starts get the default handling, even when the suite runs with SIGINT ignored (nohup, a
    background job, some CI runners): tests that send Ctrl-C or check its handling rely on it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

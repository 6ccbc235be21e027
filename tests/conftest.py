"""Shared pytest fixtures for jaxfold tests."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Root of the shared test data (``shared/`` next to the repository).

    Taken from ``$JAXFOLD_SHARED`` if set, otherwise ``<repo>/../shared``.
    Tests that need it are skipped, not failed, when it is absent so the
    suite still runs on a bare checkout.
    """
    env = os.environ.get("JAXFOLD_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(
            f"shared data directory not found at {path} "
            "(set JAXFOLD_SHARED to the folder holding data/structures)"
        )
    return path

"""Shared fixtures: seeded generators and the real data in ../shared/data (or LIPCERT_DATA).

Tests that need real data use the ``shared_data`` fixture.  Under CI (CI=true) missing data is
a failure; elsewhere those tests are skipped with a message naming the data they need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path | None:
    """The folder holding ``datasets/`` and ``models/``: LIPCERT_DATA (or its parent) or ../shared/data."""
    candidates = []
    if os.environ.get("LIPCERT_DATA"):
        root = Path(os.environ["LIPCERT_DATA"]).expanduser()
        candidates += [root, root.parent]
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "datasets").is_dir() and (c / "models").is_dir():
            return c.resolve()
    return None


def _need(what: str) -> None:
    message = (f"needs {what} from ../shared/data (or LIPCERT_DATA): the MNIST, Fashion-MNIST and "
               "CIFAR-10 test files and the third-party models listed in its README")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"missing real data under CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = find_shared_data()
    if root is None:
        _need("the shared data folder")
    return root  # type: ignore[return-value]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded freshly per test run (the seed is printed on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)

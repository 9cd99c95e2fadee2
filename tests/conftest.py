"""Shared test setup: pinned BLAS threads, replayable random draws, and the real data in ../shared/data.

Threads.  BLAS and OpenMP run on ``TEST_THREADS`` threads in every test (and in the processes tests
start): the environment variables below are set before numpy, scipy and torch are imported, torch's
pool is set with ``torch.set_num_threads``, and threadpoolctl, if installed, limits the libraries
loaded already.  A fixed count keeps sums in the same order on every machine and keeps the suite from
oversubscribing shared cores.  Other BLAS settings of the machine (OPENBLAS_CORETYPE, ...) are kept.

Seeds.  One session seed, ``LIPCERT_TEST_SEED`` or drawn at random, is shown in the header.  Every
test's seed is derived from it and the test's node id (:func:`seed_of`), so a test draws the same
numbers whichever tests run with it and in whatever order.  Tests take it from the ``seed`` or ``rng``
fixture; before every test the global generators of torch, numpy and ``random`` are seeded from it as
well, so draws without an explicit generator replay too.  A failing test's report gives its command
to replay, ``LIPCERT_TEST_SEED=<session seed> python -m pytest '<node id>'``.

Slow tests.  Tests marked ``slow`` (the full activation grids) are part of the default run, which
fits CI's budget; ``-m 'not slow'`` leaves them out for a quick run while working.

Data.  Tests that need real data use the ``shared_data`` fixture.  Under CI (CI=true) missing data is
a failure; elsewhere those tests are skipped with a message naming the data they need.
"""

from __future__ import annotations

import os
import sys

TEST_THREADS = 1
"""Threads of BLAS, OpenMP and torch in the test session."""

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_LOADED_BEFORE = sorted(m for m in ("numpy", "scipy", "torch") if m in sys.modules)
for _variable in _THREAD_VARIABLES:
    os.environ[_variable] = str(TEST_THREADS)

import hashlib  # noqa: E402  (the thread settings above must precede numpy and torch)
import random  # noqa: E402
import secrets  # noqa: E402
import shlex  # noqa: E402
from collections.abc import Generator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # the environment variables alone pin the libraries loaded after them
    _THREADPOOLCTL = False
else:
    _THREADPOOL_LIMITS = threadpool_limits(TEST_THREADS)  # kept for the whole session
    _THREADPOOLCTL = True
torch.set_num_threads(TEST_THREADS)

REPO = Path(__file__).resolve().parents[1]
SEED_VARIABLE = "LIPCERT_TEST_SEED"
_session_seed: int | None = None


def session_seed() -> int:
    """The session seed: ``LIPCERT_TEST_SEED`` (decimal or 0x-hex) or, unset, 32 random bits drawn once."""
    global _session_seed
    if _session_seed is None:
        value = os.environ.get(SEED_VARIABLE, "").strip()
        if value:
            try:
                _session_seed = int(value, 0)
            except ValueError:
                raise pytest.UsageError(f"{SEED_VARIABLE} must be an integer, got {value!r}") from None
        else:
            _session_seed = secrets.randbits(32)
    return _session_seed


def seed_of(nodeid: str) -> int:
    """64-bit seed of one test: SHA-256 of the session seed and the test's node id."""
    digest = hashlib.sha256(f"{session_seed()}:{nodeid}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def replay_command(nodeid: str, config: pytest.Config) -> str:
    """The shell command that reruns one test with this session's draws, from pytest's working directory."""
    path, sep, rest = nodeid.partition("::")
    where = os.path.relpath(config.rootpath / path, config.invocation_params.dir)
    return f"{SEED_VARIABLE}={session_seed()} python -m pytest {shlex.quote(where + sep + rest)}"


def pytest_configure(config: pytest.Config) -> None:
    # Processes started by tests (and pytest-xdist workers) see the same session seed.
    os.environ[SEED_VARIABLE] = str(session_seed())


def pytest_report_header(config: pytest.Config) -> list[str]:
    how = "threadpoolctl, " if _THREADPOOLCTL else ""
    lines = [f"random draws: {SEED_VARIABLE}={session_seed()} (replay a test: "
             f"{SEED_VARIABLE}={session_seed()} python -m pytest <node id>)",
             f"threads: {TEST_THREADS} ({how}{'/'.join(_THREAD_VARIABLES[:3])}, torch.set_num_threads)"]
    if _LOADED_BEFORE and not _THREADPOOLCTL:
        lines.append(f"warning: {', '.join(_LOADED_BEFORE)} imported before tests/conftest.py and no threadpoolctl: "
                     "their BLAS thread count is not pinned")
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("replay", f"test seed {seed_of(item.nodeid)} from session seed {session_seed()}; "
                                          f"replay: {replay_command(item.nodeid, item.config)}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    failed = [r.nodeid for kind in ("failed", "error") for r in terminalreporter.stats.get(kind, [])
              if getattr(r, "nodeid", "")]
    if failed:
        terminalreporter.section("replay")
        for nodeid in dict.fromkeys(failed):
            terminalreporter.write_line(replay_command(nodeid, terminalreporter.config))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed (see :func:`seed_of`); also recorded in the test's user properties."""
    value = seed_of(request.node.nodeid)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """A numpy generator seeded with this test's seed."""
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _seed_global_generators(request: pytest.FixtureRequest) -> None:
    """Seed torch's, numpy's legacy and python's global generators with this test's seed."""
    value = seed_of(request.node.nodeid)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


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

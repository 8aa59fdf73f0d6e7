import os
import subprocess
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

def pytest_collection_modifyitems(items):
    """A test against the real Slurm is slow (a cluster is started for it): it leaves the fast tier."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.slow)


SHARED_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"


@pytest.fixture(scope="session", autouse=True)
def index_cache(tmp_path_factory):
    """File indexes, decode checks and parsed annotations of the tests' trees go to a folder of the
    session (semisup.data.fileindex), not the user's ~/.cache; commands the tests start inherit it."""
    from semisup.data.fileindex import CACHE_VARIABLE
    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(tmp_path_factory.mktemp("index_cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_VARIABLE, None)
    else:
        os.environ[CACHE_VARIABLE] = previous


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> str:
    """One demo-dataset cache for the whole session (it takes seconds to build)."""
    return str(os.environ.get("SEMISUP_TEST_DEMO_CACHE") or tmp_path_factory.mktemp("demo_cache"))


@pytest.fixture(scope="session")
def shared_splits() -> Path:
    if not (SHARED_SPLITS / "1percent.txt").is_file():
        pytest.skip(f"the standard split files are not at {SHARED_SPLITS} (they sit in ../shared/splits beside the project on CI)")
    return SHARED_SPLITS


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm (slurmctld and two slurmd, tests/slurm/cluster.sh) for the session; skipped
    with the reason where one cannot be started (not root, no namespaces, no apt-get)."""
    from tests.slurm_harness import CANNOT_INSTALL, CLUSTER_SH, SlurmCluster, unavailable
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(CLUSTER_SH), "start", str(state)], capture_output=True, text=True, timeout=900)
    if started.returncode == CANNOT_INSTALL:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    try:
        yield SlurmCluster(state)
    finally:
        subprocess.run([str(CLUSTER_SH), "stop", str(state)], capture_output=True, text=True, timeout=120)

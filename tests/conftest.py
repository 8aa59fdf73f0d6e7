import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> str:
    """One demo-dataset cache for the whole session (it takes seconds to build)."""
    return str(os.environ.get("SEMISUP_TEST_DEMO_CACHE") or tmp_path_factory.mktemp("demo_cache"))


@pytest.fixture(scope="session")
def shared_splits() -> Path:
    if not (SHARED_SPLITS / "1percent.txt").is_file():
        pytest.skip(f"the standard split files are not at {SHARED_SPLITS} (they sit in ../shared/splits beside the project on CI)")
    return SHARED_SPLITS

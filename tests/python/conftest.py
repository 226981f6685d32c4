"""Shared pytest setup: training/ on sys.path, the repository and build directories, and the
C++ tools the tests run (a missing tool fails the test: it is part of the build, not optional)."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "training"))

# Where a target of each CMake subdirectory ends up in the build tree.
TOOL_DIRS = ("tests/tools", "server", "bench", "tests/cpp", ".")


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def build_dir() -> str:
    return os.path.abspath(os.environ.get("SPANSERVE_BUILD_DIR", os.path.join(REPO, "build")))


@pytest.fixture(scope="session")
def find_binary(build_dir):
    """find_binary(name) -> path of a built executable; fails the test when it is not built."""
    def find(name: str) -> str:
        for sub in TOOL_DIRS:
            path = os.path.join(build_dir, sub, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        pytest.fail(f"binary '{name}' is missing: looked in {build_dir}/{{{','.join(TOOL_DIRS)}}}. "
                    f"Build it (cmake --build {build_dir} --target {name}) or point "
                    f"SPANSERVE_BUILD_DIR at the build directory that has it.", pytrace=False)
    return find


@pytest.fixture(scope="session")
def test_tokenizer_path() -> str:
    """The 320-piece test tokenizer: <a> = 3, </a> = 4, digits split."""
    return os.path.join(REPO, "tests", "data", "tokenizer", "tokenizer.model")

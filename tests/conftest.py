"""Shared fixtures, and how `make test` spreads the suite over worker processes (pytest-xdist):
each test file is one unit of work, run whole by one worker, so a module's servers start once; the
files that run the real vLLM (their names say `vllm`) are one unit together, handed out first,
so that one worker installs vLLM's venv and runs its servers one at a time while the other
workers run the rest; the image's build and run (tests/deploy/test_image.py) is handed out next."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from rig import FakeClock  # noqa: E402

VLLM_UNIT = "real vLLM"
LONG_UNITS = (VLLM_UNIT, "tests/deploy/test_image.py")  # handed out first, in this order


def vllm_file(nodeid: str) -> bool:
    """Whether the test's file runs the real vLLM (its name says `vllm`)."""
    return "vllm" in pathlib.PurePath(nodeid.split("::", 1)[0]).name


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return VLLM_UNIT if vllm_file(nodeid) else nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            for unit in reversed(LONG_UNITS):  # the longest units start first
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """A test that uses the real vLLM (the `model_dir` fixture) must sit in a file named for it."""
    misplaced = [item.nodeid for item in items if "model_dir" in item.fixturenames and not vllm_file(item.nodeid)]
    if misplaced:
        raise pytest.UsageError(f"tests using the real vLLM outside a *vllm* file: {misplaced}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))


class FakeClock:
    """A settable clock (Unix seconds) shared by a simulated GPU, its sampler and the ledger."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_sampler(sampler, clock: FakeClock, seconds: float, step: float = 0.1) -> None:
    """Step `sampler` every `step` seconds of fake time for `seconds`."""
    for _ in range(int(round(seconds / step))):
        sampler.step()
        clock.advance(step)
    sampler.step()

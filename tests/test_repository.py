"""The tree stays small enough to clone quickly: raw run data is regenerated, not tracked."""

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_TRACKED_BYTES = 1 << 20


def test_no_tracked_file_is_over_1_mib():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    assert paths, "git lists no file"
    large = {str(p.relative_to(ROOT)): p.stat().st_size for p in paths if p.is_file() and not p.is_symlink()
             and p.stat().st_size > MAX_TRACKED_BYTES}
    assert large == {}

"""Fixtures of the loadgen tests: the vLLM fixtures of tests/vllm (re-exported), one vLLM server
for the module that uses it, stopped before other tests run (loadgen_stack.Stack) and an energy endpoint."""

from __future__ import annotations

import importlib.util

import pytest
from loadgen_stack import VLLM_TESTS, EnergyStandIn, Stack
from servers import http_get

_spec = importlib.util.spec_from_file_location("vllm_test_fixtures", VLLM_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
vllm_venv = _fixtures.vllm_venv
model_dir = _fixtures.model_dir


@pytest.fixture(scope="module")
def stack(model_dir, tmp_path_factory) -> Stack:
    s = Stack(model_dir, tmp_path_factory.mktemp("loadgen-vllm"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def energy_url(stack) -> str:
    """The exporter's own /api/v1/energy where it serves it, else the stand-in."""
    status, _ = http_get(stack.exporter.url("/api/v1/energy?start=1&end=2"))
    if status != 404:
        yield stack.exporter.url("")
        return
    standin = EnergyStandIn()
    yield standin.url
    standin.stop()

"""Fixtures for the real-vLLM tests: the vLLM venv (installed on first use) and the tiny model.

A failed install fails the tests with its output; nothing here skips."""

from pathlib import Path

import pytest
from vllm_stack import build_model, setup_vllm, tail


@pytest.fixture(scope="session")
def vllm_venv() -> None:
    """.venv-vllm, created by scripts/setup-vllm.sh when missing or incomplete (stamp file)."""
    try:
        setup_vllm()
    except Exception as e:  # noqa: BLE001 - any failure is the test's failure, with the reason
        pytest.fail(f"could not set up vLLM: {e}", pytrace=False)


@pytest.fixture(scope="session")
def model_dir(vllm_venv) -> Path:
    """The tiny random Llama and its tokenizer, built once under .cache/."""
    try:
        return build_model()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not build the tiny model: {e}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, shows the end of the logs of the servers the test used (fixtures with `.logs`)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        for label, get_text in getattr(value, "logs", {}).items():
            try:
                text = get_text()
            except OSError as e:
                text = f"(unreadable: {e})"
            report.sections.append((f"{label} (last lines)", tail(text, 150)))

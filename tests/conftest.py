"""Shared pytest fixtures, and CI's rule that a missing module fails a test instead of skipping it."""

from __future__ import annotations

import os

import pytest
import torch

# What ``pytest.importorskip`` says when it skips: "could not import 'recsim': No module named ...".
MISSING_MODULE_SKIP = "could not import"


def _strict_imports() -> bool:
    """Under CI (``CI=true``) every optional module the tests use must be installed (``scripts/test.sh``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _fail_missing_module_skip(report: pytest.TestReport | pytest.CollectReport, skip_message: str) -> None:
    if report.skipped and _strict_imports() and skip_message.startswith(MISSING_MODULE_SKIP):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test may not skip for a missing module ({skip_message}); install it in scripts/test.sh"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI, a test that skips because a module failed to import fails instead, naming the module."""
    report = yield
    if call.excinfo is not None:
        _fail_missing_module_skip(report, str(call.excinfo.value))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a whole test module that skips at import (a module-level ``importorskip``)."""
    report = yield
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: <message>")
        _fail_missing_module_skip(report, report.longrepr[2].removeprefix("Skipped: "))
    return report


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine run fastest on one thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""A CUDA error (a device-side assert, say) poisons the whole process: every later CUDA call
in it fails too. Each CUDA test ends with a synchronize, so an asynchronous error is blamed
on the test that caused it; under xdist, a worker that hit one then exits, so that test is
reported as crashed and the remaining tests run in a fresh worker instead of failing in
cascade."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _synchronize_cuda(request):
    yield
    if request.node.name.endswith("_cuda") and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.failed and call.excinfo is not None
            and "CUDA error" in str(call.excinfo.value)
            and os.environ.get("PYTEST_XDIST_WORKER")):
        os._exit(3)  # xdist marks the test crashed and starts a replacement worker

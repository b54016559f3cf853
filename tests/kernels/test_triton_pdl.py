"""When kiln's Triton kernels ask for programmatic dependent launch: on a CUDA device of
compute capability 9 or more, never in Triton's interpreter, on the CPU or with
KILN_PDL=0, and not for the first kernel of a captured graph unless KILN_PDL=all. (The kernels' results with it on are checked by the Triton kernel tests on
the GPU, and inside captured CUDA graphs by the INT8 engine tests there.)"""

from __future__ import annotations

import pytest
import torch

from kiln.kernels import graph_start
from kiln.kernels.triton import _pdl

CUDA = torch.device("cuda", 0)


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(_pdl, "_capable", lambda index: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("KILN_PDL", raising=False)


def test_on_for_a_capable_cuda_device(hopper):
    assert _pdl.launch(CUDA) == {"PDL": True, "launch_pdl": True}


@pytest.mark.parametrize("setting", [("KILN_PDL", "0"), ("TRITON_INTERPRET", "1")])
def test_off_when_asked_or_interpreted(hopper, monkeypatch, setting):
    monkeypatch.setenv(*setting)
    assert _pdl.launch(CUDA) == {"PDL": False}


def test_off_on_the_cpu_and_before_hopper(hopper, monkeypatch):
    assert _pdl.launch(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setattr(_pdl, "_capable", lambda index: False)
    assert _pdl.launch(CUDA) == {"PDL": False}


def test_first_kernel_of_a_capture_goes_plain(hopper):
    on, off = {"PDL": True, "launch_pdl": True}, {"PDL": False}
    with graph_start.capturing():
        assert [_pdl.launch(CUDA) for _ in range(3)] == [off, on, on]
    assert _pdl.launch(CUDA) == on  # outside a capture: every kernel
    with graph_start.capturing():  # each capture starts anew
        assert [_pdl.launch(CUDA) for _ in range(2)] == [off, on]


def test_first_kernel_keeps_pdl_when_asked(hopper, monkeypatch):
    monkeypatch.setenv("KILN_PDL", "all")
    with graph_start.capturing():
        assert _pdl.launch(CUDA) == {"PDL": True, "launch_pdl": True}


def test_a_plain_launch_does_not_spend_the_first_turn(hopper, monkeypatch):
    # a kernel that cannot use PDL (on the CPU here) leaves the turn to the next one
    with graph_start.capturing():
        assert _pdl.launch(torch.device("cpu")) == {"PDL": False}
        assert _pdl.launch(CUDA) == {"PDL": False}
        assert _pdl.launch(CUDA) == {"PDL": True, "launch_pdl": True}

"""When kiln's Triton kernels ask for programmatic dependent launch: on a CUDA device of
compute capability 9 or more, never in Triton's interpreter, on the CPU or with
KILN_PDL=0. (The kernels' results with it on are checked by the Triton kernel tests on
the GPU, and inside captured CUDA graphs by the INT8 engine tests there.)"""

from __future__ import annotations

import pytest
import torch

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

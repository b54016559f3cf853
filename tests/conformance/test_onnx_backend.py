"""The ONNX backend node test suite, run through `kiln.backend` (build an FP32 engine, run it).

Which tests are expected to fail, and why, is in `expected_failures.py` beside this file.
`ort_passed.txt` lists the node tests ONNX Runtime passes under the same pins (onnx 1.23.2,
onnxruntime 1.31.1), the denominator of the conformance goal; `python
tests/conformance/report.py` prints kiln passed / ORT passed / total.
"""

from __future__ import annotations

import os
import unittest

import onnx.backend.test

import kiln.backend
from tests.conformance.expected_failures import EXPECTED_FAILURES, NONDETERMINISTIC

backend_test = onnx.backend.test.BackendTest(kiln.backend, __name__)
backend_test.include(r"^test_.*_cpu$")
if os.environ.get("KILN_CONFORMANCE_CUDA"):
    backend_test.include(r"^test_.*_cuda$")
for pattern in EXPECTED_FAILURES:
    backend_test.xfail(pattern)
for pattern in NONDETERMINISTIC:
    backend_test.exclude(pattern)

# only the node tests: the model tests download real models, which CI cannot
OnnxBackendNodeModelTest = backend_test.test_cases["OnnxBackendNodeModelTest"]

if __name__ == "__main__":
    unittest.main()

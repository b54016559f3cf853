"""Prints the conformance counts the README states: kiln passed / ORT passed / total.

Runs the node tests through kiln.backend on the CPU and compares with ort_passed.txt (the
node tests ONNX Runtime 1.31.1 passes under onnx 1.23.2).

    python tests/conformance/report.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_onnx_backend.py"), "-n", "2",
         "-p", "no:cacheprovider", "-rA", "-o", "addopts="],
        capture_output=True, text=True, cwd=HERE.parent.parent)
    status: dict[str, str] = {}
    for line in run.stdout.splitlines():
        match = re.match(r"^(PASSED|FAILED|XFAIL|SKIPPED|ERROR) \S*::(test_\w+_cpu)", line)
        if match:
            status[match.group(2)] = match.group(1)
    ort = set((HERE / "ort_passed.txt").read_text().split())
    passed = {name for name, s in status.items() if s == "PASSED"}
    cpu_tests = {n for n in status}
    print(f"node tests (CPU): {len(cpu_tests)}")
    print(f"kiln passes: {len(passed)}")
    print(f"ORT passes: {len(ort)}")
    print(f"kiln passes of ORT's: {len(passed & ort)} / {len(ort)} "
          f"({100 * len(passed & ort) / len(ort):.1f}%)")
    missing = sorted(ort - passed)
    if missing:
        print("ORT passes, kiln does not:", ", ".join(missing))


if __name__ == "__main__":
    main()

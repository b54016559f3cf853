"""Node tests kiln is expected to fail, each with the reason above it.

Patterns are regular expressions over test names (`test_<name>_cpu`).
"""

EXPECTED_FAILURES: list[str] = []

"""Expected failures among sequence, optional, string, ai.onnx.ml, random, training and
image ops (the non-numeric share of the node tests). ONNX Runtime fails every one of these
too.
"""

EXPECTED_FAILURES: list[str] = [
    # The expected outputs are particular draws of numpy's global random generator; kiln
    # draws from torch's (as ORT draws from its own), so values differ while shapes,
    # dtypes and distributions match (tests/ops/test_random_ops.py checks those).
    # With a seed attribute kiln's draws are fixed, so these fail every run.
    r"^test_bernoulli_seed(_expanded)?_(cpu|cuda)$",
    r"^test_training_dropout(_default)?(_mask)?_(cpu|cuda)$",
    # The test's expected sequence holds a 0-d tensor, and onnx's runner compares sequence
    # items by recursing with them as if they were output lists, calling len() on the 0-d
    # array (TypeError in the harness, before kiln's values are looked at). kiln's outputs
    # are right: the same values and shapes as the expected ones.
    r"^test_loop16_seq_none_(cpu|cuda)$",
]

NONDETERMINISTIC: list[str] = [
    # Unseeded Bernoulli over 10 fixed probabilities: torch's global generator (whose state
    # depends on which tests ran before in the process) reproduces numpy's particular draw
    # with probability 0.44% per test, so a strict expected failure would pass by luck in
    # about 1 run of 60. Not run; test_random_ops.py checks the distribution instead.
    r"^test_bernoulli(_double)?(_expanded)?_(cpu|cuda)$",
]

"""Numeric-operator node tests kiln is expected to fail, each with its reason."""

EXPECTED_FAILURES: list[str] = [
    # The expanded (function-body) graph runs Softmax in fp16. ONNX's numpy reference rounds
    # exp() and the row sum to fp16 at each step; kiln's Softmax accumulates in float32,
    # which lands 2 fp16 ulps away on two elements, just over the test's rtol of 1e-3. The
    # native Attention test (test_attention_4d_causal_fp16) passes.
    r"^test_attention_4d_causal_fp16_expanded_cpu$",
    # The expected imaginary parts are numpy's complex64 rounding noise (1.9e-7 where the
    # exact value is 0); torch.fft returns the exact 0, outside the test's atol of 1e-7.
    r"^test_dft_inverse_cpu$",
    r"^test_dft_inverse_opset19_cpu$",
]

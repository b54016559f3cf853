"""Numeric-operator node tests kiln is expected to fail, each with its reason."""

EXPECTED_FAILURES: list[str] = [
    # The expanded (function-body) graph runs Softmax in fp16. ONNX's numpy reference rounds
    # exp() and the row sum to fp16 at each step; kiln's Softmax accumulates in float32,
    # which lands 2 fp16 ulps away on two elements, just over the test's rtol of 1e-3. The
    # native Attention test (test_attention_4d_causal_fp16) passes.
    r"^test_attention_4d_causal_fp16_expanded_(cpu|cuda)$",
    # On CUDA, fp16 Attention runs in the fused SDPA kernels (as TensorRT's fp16 attention
    # does), which round the probabilities to fp16 before multiplying by V: one or two
    # elements land one fp16 ulp from ONNX's float32-computed reference, just over rtol 1e-3.
    # On the CPU, kiln computes fp16 attention in float32 and these pass.
    r"^test_attention_4d(_causal)?_fp16_cuda$",
    # The expected imaginary parts are numpy's complex64 rounding noise (1.9e-7 where the
    # exact value is 0); torch.fft returns the exact 0, outside the test's atol of 1e-7.
    r"^test_dft_inverse_(cpu|cuda)$",
    r"^test_dft_inverse_opset19_(cpu|cuda)$",
]

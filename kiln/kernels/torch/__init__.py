"""Tactics that call torch (cuDNN, cuBLAS, oneDNN, SDPA) on the CPU or CUDA."""

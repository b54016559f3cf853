"""Benchmarking: trtexec-style timing, peers, accuracy comparison, reports."""

"""kiln's own GPU kernels, written in Triton. Triton is optional: the kernel modules
(named with a leading underscore, so the tactic registry never imports them) load only
when a tactic binds on a CUDA device, and tactics decline layers when Triton is absent."""

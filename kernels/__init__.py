"""PagedAttention kernels in Triton, each with a plain-PyTorch reference (the real-engine issue)."""

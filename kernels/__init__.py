"""PagedAttention kernels: Triton implementations (`kernels.triton_ops`) and their plain-PyTorch
references (`kernels.reference`), which the CPU path uses by default.

Import `kernels.triton_ops` only after deciding whether Triton must interpret (TRITON_INTERPRET=1 on a
machine without a GPU): Triton reads that variable when the module is imported.
"""

"""PagedAttention kernels, one module per device, each tested against the plain-PyTorch references.

- `kernels.reference`: the semantics, in plain PyTorch (cache write, paged decode, prefill over a cached
  prefix, block copy); slow, obviously right.
- `kernels.triton_ops`: the same four operations in Triton, used on CUDA.
- `kernels.cpu_ops`: the CPU path. Decode attention is the native C kernel (`kernels.cpu_native`,
  `csrc/paged_decode.c`, built with the machine's C compiler on first use), with a torch.compile
  fallback where no compiler is found; prefill uses PyTorch's fused attention.

Import `kernels.triton_ops` only after deciding whether Triton must interpret (TRITON_INTERPRET=1 on a
machine without a GPU): Triton reads that variable when the module is imported.
"""

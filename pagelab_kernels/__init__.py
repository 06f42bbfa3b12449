"""PagedAttention kernels, one module per device, each tested against the plain-PyTorch references.

The package is `pagelab_kernels`, not `kernels`: Hugging Face ships a `kernels` distribution that
transformers (5.x) imports whenever it is installed, and a top-level `kernels` here would shadow it
and break `import transformers` (docs/ARCHITECTURE.md).

- `pagelab_kernels.reference`: the semantics, in plain PyTorch (cache write, paged decode, prefill
  over a cached prefix, block copy); slow, obviously right.
- `pagelab_kernels.triton_ops`: the same four operations in Triton, used on CUDA.
- `pagelab_kernels.cpu_ops`: the CPU path. Decode attention is the native C kernel
  (`pagelab_kernels.cpu_native`, `csrc/paged_decode.c`, built with the machine's C compiler on first
  use), with a torch.compile fallback where no compiler is found; prefill uses PyTorch's fused
  attention.

Import `pagelab_kernels.triton_ops` only after deciding whether Triton must interpret
(TRITON_INTERPRET=1 on a machine without a GPU): Triton reads that variable when the module is imported.
"""

"""Pure torch kernels: tensors in, tensors out; no I/O, no device moves."""

"""lamina engine: models, capture, store and on-device kernels."""

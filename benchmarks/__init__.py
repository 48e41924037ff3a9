"""Benchmarks: lamina side by side with course-style code, TransformerLens cache and the bare forward."""

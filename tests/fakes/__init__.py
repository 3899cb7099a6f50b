"""Tiny fake datasets written in the real on-disk layouts of the benchmarks (test helpers, not tests)."""

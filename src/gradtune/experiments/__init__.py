"""Experiments: the offline benchmarks, the demo, and the runner that stores results.

Submodules are imported on demand (the offline benchmarks pull in encoders and data
packages that only the demo needs).
"""

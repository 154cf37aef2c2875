"""Experiments: configs, bundle sources (the offline benchmarks among them), launchers and the
runner that writes every run to the results store.

Submodules are imported on demand (the offline benchmarks pull in encoders and data
packages that only they need).
"""

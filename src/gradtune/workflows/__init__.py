"""Workflows: end-to-end tasks that the CLI commands call, above experiments and reports.

* :mod:`~gradtune.workflows.demo`: the offline demo (run the grid, write the report folder).
"""

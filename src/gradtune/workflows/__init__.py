"""Workflows: end-to-end tasks that the CLI commands call, above experiments and reports.

* :mod:`~gradtune.workflows.demo`: the offline demo (run the grid, write the report folder);
* :mod:`~gradtune.workflows.experiment`: experiment configs into one results store (``run``);
* :mod:`~gradtune.workflows.train`: full-network training from a config (``train``), running
  the methods of :mod:`~gradtune.workflows.network_methods`;
* :mod:`~gradtune.workflows.tune`: a last-layer method on one embedding bundle (``tune``).
"""

"""The results layer: the SQLite store of runs that the experiment runner writes and the
reports read (:mod:`~gradtune.results.store`), and helpers to read it
(:mod:`~gradtune.results.records`).
"""

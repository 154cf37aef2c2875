"""Running experiment configs into one results store, as ``gradtune run`` does.

* :func:`load_selected` reads configs (files or packaged names), cuts them to some of
  their benchmarks and checks their bundle files;
* :func:`run_configs` runs them through the experiment runner (resuming: finished runs
  are reused), optionally logging new runs to MLflow and writing the paper report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradtune.experiments.config import ExperimentConfig, load_config, select_benchmarks
from gradtune.experiments.runner import ExecutionSummary, run_experiments
from gradtune.results.records import store_path_for

logger = logging.getLogger(__name__)

__all__ = ["benchmark_names", "load_selected", "run_configs", "RunOutcome"]


def benchmark_names(values: Sequence[str]) -> list[str]:
    """Benchmark names given space- or comma-separated, in order, each once."""
    return list(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))


def load_selected(configs: Sequence[str | Path], *, benchmarks: Sequence[str] | None = None,
                  bundles: str | Path | None = None) -> list[ExperimentConfig]:
    """The configs (files or packaged names), cut to ``benchmarks``, with their bundle files checked.

    ``bundles`` is the value of ``${GRADTUNE_BUNDLES}`` in bundle paths (default: the
    environment variable). Configs that have none of ``benchmarks`` are left out (a warning
    on the ``gradtune`` logger).
    """
    variables = None if bundles is None else {"GRADTUNE_BUNDLES": str(bundles)}
    loaded = [load_config(c, check_paths=False, variables=variables) for c in configs]
    if benchmarks is not None:
        loaded, skipped = select_benchmarks(loaded, benchmark_names(benchmarks))
        for c in skipped:
            logger.warning("%s: left out (none of the asked benchmarks is among its benchmarks %s)", c.name,
                           ", ".join(b.name for b in c.benchmarks))
    for c in loaded:
        c.check_paths()
    return loaded


@dataclass
class RunOutcome:
    """What :func:`run_configs` did: the runner's summary, the store, and the report if written."""

    summary: ExecutionSummary
    store: Path
    report: Any = None


def run_configs(configs: Sequence[ExperimentConfig], out: str | Path, *, workers: int | None = None,
                launcher: str | None = None, cluster: str | None = None, force: bool = False,
                cache_dir: str | Path | None = None, mlflow: bool = False, progress: bool = True,
                on_record: Callable[[dict, bool], None] | None = None, command: str | None = None,
                report: bool = False) -> RunOutcome:
    """Run every config's grid into the store under ``out`` (``out/results.sqlite``).

    ``workers`` / ``launcher`` / ``cluster`` override the first config's ``[launcher]``;
    ``mlflow`` logs each new run to MLflow; ``on_record(record, reused)`` is called after
    each run; ``report`` writes the paper report into ``out/report`` (complete items only).
    """
    out = Path(out)
    logger = None
    if mlflow:
        from gradtune.experiments.tracking import MlflowLogger

        logger = MlflowLogger(experiment="gradtune:" + "+".join(c.name for c in configs))
    store_path = store_path_for(out)
    kind = launcher or configs[0].launcher.kind
    if cluster:
        configs[0].launcher.submitit["cluster"] = cluster

    def handle(record: dict, reused: bool) -> None:
        if on_record is not None:
            on_record(record, reused)
        if logger is not None and not reused:
            logger.log(record)

    summary = run_experiments(configs, store_path, workers=workers, launcher=kind, force=force, cache_dir=cache_dir,
                              progress=progress, on_record=handle, command=command)
    outcome = RunOutcome(summary, store_path)
    if report:
        from gradtune.report.paper_report import write_paper_report

        outcome.report = write_paper_report(store_path, out / "report", partial=False)
    return outcome

"""Optional MLflow logging of finished runs (``gradtune run --mlflow``).

The SQLite store is always the record of truth; MLflow only mirrors each newly computed
run (parameters, headline metrics of the selection and test rows, per-group test
accuracies, tags with the run id, code version and bundle fingerprint). MLflow is never
required: asking for it without the package installed is a clear error before any run.
"""

from __future__ import annotations

from typing import Any

from gradtune._validation import GradTuneInputError

__all__ = ["MlflowLogger"]

_METRICS = ("accuracy", "worst_group_accuracy", "mean_group_accuracy", "weighted_accuracy", "worst_class_accuracy")


class MlflowLogger:
    """Mirror finished runs into MLflow.

    Parameters
    ----------
    experiment : str
        The MLflow experiment name (created if missing).
    tracking_uri : str, optional
        Default: MLflow's own default (``$MLFLOW_TRACKING_URI`` or ``./mlruns``).
    """

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise GradTuneInputError("--mlflow was given but the mlflow package is not installed "
                                     "(pip install 'gradtune[tracking]'); every result is in the SQLite store regardless") from None
        self._mlflow = mlflow
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)

    def log(self, record: dict[str, Any]) -> None:
        """Log one finished run (failed runs are logged with a 'failed' tag and no metrics)."""
        from gradtune.results.records import flatten_params

        mlflow = self._mlflow
        name = f"{record['label']} | {record['benchmark']} | seed {record['seed']}"
        with mlflow.start_run(run_name=name):
            params = {k: str(v) for k, v in flatten_params(record.get("params") or {}).items()}
            params.update({"benchmark": record["benchmark"], "seed": str(record["seed"]),
                           "method": record["method"]})
            mlflow.log_params(params)
            mlflow.set_tags({"gradtune.run_id": record["run_id"], "gradtune.status": record.get("status", "done"),
                             "gradtune.code_version": str(record.get("code_version")),
                             "gradtune.git_commit": str(record.get("git_commit")),
                             "gradtune.bundle_fingerprint": record.get("bundle_fingerprint", ""),
                             "gradtune.label": record["label"]})
            metrics: dict[str, float] = {}
            for split, ev in (record.get("evaluation") or {}).items():
                for k in _METRICS:
                    if ev.get(k) is not None:
                        metrics[f"{split}_{k}"] = float(ev[k])
            test = (record.get("evaluation") or {}).get("test") or {}
            names = record.get("group_names") or []
            for g, a in enumerate(test.get("group_accuracy") or []):
                if a is not None:
                    key = names[g] if g < len(names) else f"group{g}"
                    metrics[f"test_group_accuracy.{_safe(key)}"] = float(a)
            if record.get("fit_seconds") is not None:
                metrics["fit_seconds"] = float(record["fit_seconds"])
            if metrics:
                mlflow.log_metrics(metrics)


def _safe(name: str) -> str:
    """MLflow metric names allow letters, digits, '_', '-', '.', ' ', '/'."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in str(name))

"""Launchers: where independent runs execute.

A launcher takes the pending tasks and the function that runs one task (the runner passes
its picklable tasks and :func:`gradtune.experiments.runner.execute_task`), and calls
``on_result(record)`` in the calling process for each finished task, so only the calling
process writes to the results store.

* :class:`LocalLauncher` — in this process (``workers=1``), or a pool of ``workers``
  processes (``concurrent.futures.ProcessPoolExecutor``, spawn start method, one torch
  thread per worker).
* :class:`SubmititLauncher` — jobs on a SLURM cluster (or submitit's ``local`` / ``debug``
  executors) through `submitit <https://github.com/facebookincubator/submitit>`_, when it
  is installed. Jobs return their records to the submitting process, which writes them
  (SQLite is not safe on network file systems).

The task function never raises: a failing run comes back as a record with
``status='failed'``; a job that dies on a cluster is recorded through ``failure(task, message)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from gradtune._validation import GradTuneInputError

__all__ = ["Launcher", "LocalLauncher", "SubmititLauncher", "make_launcher", "LAUNCHERS", "submitit_available"]

LAUNCHERS = ("local", "submitit")


def submitit_available() -> bool:
    """Whether the optional ``submitit`` package can be imported."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


class Launcher(ABC):
    """Runs tasks and reports each finished record through ``on_result``."""

    name: str = ""
    #: whether tasks must be picklable (run in other processes)
    remote: bool = True

    @abstractmethod
    def run(self, tasks: Sequence[Any], task_fn: Callable[[Any], dict], on_result: Callable[[dict], None],
            failure: Callable[[Any, str], dict] | None = None) -> None:
        """Execute ``task_fn(task)`` for every task; call ``on_result(record)`` once per task, in this process.

        ``task_fn`` must never raise (it returns a failure record instead) and, for
        launchers that run tasks in other processes, be a module-level function.
        ``failure(task, message)`` makes the record of a task whose worker died.
        """

    def describe(self) -> str:
        return self.name


def _worker_init(parent: int | None = None) -> None:
    import torch

    from gradtune._process import die_with_parent

    if parent is not None:  # a pool worker: a killed grid leaves no orphans
        die_with_parent(parent)
        # Ctrl-C reaches the whole process group: the parent reports it once and stops the
        # pool; a worker that raised KeyboardInterrupt too would print its own traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class LocalLauncher(Launcher):
    """This machine: sequential in-process (``workers=1``) or a process pool.

    Parameters
    ----------
    workers : int, default=1
        Worker processes. Each sets ``torch.set_num_threads(1)``; tiny training
        steps run fastest and most steadily on one thread (see benchmarks/).
    start_method : {'spawn', 'forkserver', 'fork'}, default='spawn'
        How workers start. 'spawn' (fresh interpreters, each importing torch once) is the
        safe default; 'fork' starts instantly and is safe here because workers never run
        more than one torch thread, but forking a process that already ran multi-threaded
        OpenMP code is fragile in general.
    """

    name = "local"

    def __init__(self, workers: int = 1, *, start_method: str = "spawn") -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise GradTuneInputError(f"workers must be an integer >= 1, got {workers!r}")
        if start_method not in mp.get_all_start_methods():
            raise GradTuneInputError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}")
        self.workers = workers
        self.start_method = start_method
        self.remote = workers > 1

    def describe(self) -> str:
        return "in-process" if self.workers == 1 else f"{self.workers} local worker processes"

    def run(self, tasks: Sequence[Any], task_fn: Callable[[Any], dict], on_result: Callable[[dict], None],
            failure: Callable[[Any, str], dict] | None = None) -> None:
        if self.workers == 1 or len(tasks) <= 1:
            for t in tasks:
                on_result(task_fn(t))
            return
        ctx = mp.get_context(self.start_method)
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                                 initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            pending = {pool.submit(task_fn, t) for t in tasks}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        on_result(fut.result())
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _execute_batch(task_fn: Callable[[Any], dict], tasks: Sequence[Any]) -> list[dict]:
    """A submitit job: run several tasks in one job, one torch thread."""
    _worker_init()
    return [task_fn(t) for t in tasks]


class SubmititLauncher(Launcher):
    """SLURM (or submitit's local/debug executors) through submitit.

    Parameters
    ----------
    folder : path
        Where submitit keeps job scripts, logs and pickled results.
    cluster : {'slurm', 'local', 'debug'} or None, default=None
        None lets submitit pick (SLURM when ``sbatch`` exists, else local).
    parameters : dict, optional
        Passed to ``AutoExecutor.update_parameters`` (``timeout_min``, ``slurm_partition``,
        ``mem_gb``, ...). ``cpus_per_task`` defaults to 1.
    tasks_per_job : int, default=1
        Runs grouped into one job (one array element).
    poll_seconds : float, default=5.0
    """

    name = "submitit"

    def __init__(self, folder: str | Path, *, cluster: str | None = None, parameters: dict[str, Any] | None = None,
                 tasks_per_job: int = 1, poll_seconds: float = 5.0) -> None:
        if not submitit_available():
            raise GradTuneInputError("--launcher submitit needs the submitit package (pip install 'gradtune[cluster]'); "
                                     "use --launcher local --workers N on one machine")
        if cluster not in (None, "slurm", "local", "debug"):
            raise GradTuneInputError(f"submitit cluster must be 'slurm', 'local' or 'debug', got {cluster!r}")
        if not isinstance(tasks_per_job, int) or tasks_per_job < 1:
            raise GradTuneInputError(f"tasks_per_job must be an integer >= 1, got {tasks_per_job!r}")
        self.folder = Path(folder)
        self.cluster = cluster
        self.parameters = {"cpus_per_task": 1, "name": "gradtune", **(parameters or {})}
        self.tasks_per_job = tasks_per_job
        self.poll_seconds = float(poll_seconds)

    def describe(self) -> str:
        return f"submitit ({self.cluster or 'auto'}; {self.folder})"

    def run(self, tasks: Sequence[Any], task_fn: Callable[[Any], dict], on_result: Callable[[dict], None],
            failure: Callable[[Any, str], dict] | None = None) -> None:
        import submitit

        if failure is None:
            raise GradTuneInputError("the submitit launcher needs a failure(task, message) function for dead jobs")
        if not tasks:
            return
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params = dict(self.parameters)
        if executor.cluster != "slurm":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        executor.update_parameters(**params)
        batches = [list(tasks[i:i + self.tasks_per_job]) for i in range(0, len(tasks), self.tasks_per_job)]
        jobs = executor.map_array(_execute_batch, [task_fn] * len(batches), batches)
        pending = list(zip(jobs, batches, strict=True))

        def collect(job: Any, batch: list) -> None:
            try:
                records = job.result()
            except Exception as err:  # the job itself died (time limit, node failure, ...)
                records = [failure(t, f"submitit job {job.job_id} failed: {err}") for t in batch]
            for r in records:
                on_result(r)

        if executor.cluster == "debug":  # debug jobs run when their result is asked for
            for job, batch in pending:
                collect(job, batch)
            return
        while pending:
            still = []
            for job, batch in pending:
                if job.done():
                    collect(job, batch)
                else:
                    still.append((job, batch))
            pending = still
            if pending:
                time.sleep(self.poll_seconds)


def make_launcher(kind: str = "local", *, workers: int = 1, folder: str | Path | None = None,
                  options: dict[str, Any] | None = None) -> Launcher:
    """A launcher by name. For 'submitit', ``options`` are the config's ``[launcher.submitit]``
    table (``cluster``, ``tasks_per_job``, ``poll_seconds``, and submitit parameters); for
    'local', ``options`` may hold ``start_method``."""
    if kind == "local":
        return LocalLauncher(workers, start_method=(options or {}).get("start_method", "spawn"))
    if kind == "submitit":
        opts = dict(options or {})
        cluster = opts.pop("cluster", None)
        tasks_per_job = int(opts.pop("tasks_per_job", 1))
        poll = float(opts.pop("poll_seconds", 5.0))
        if folder is None:
            raise GradTuneInputError("the submitit launcher needs a folder for its logs")
        return SubmititLauncher(folder, cluster=cluster, parameters=opts, tasks_per_job=tasks_per_job,
                                poll_seconds=poll)
    raise GradTuneInputError(f"unknown launcher {kind!r}; available: {list(LAUNCHERS)}")

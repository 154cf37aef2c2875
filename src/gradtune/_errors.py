"""The error boundary of the command line, and the errors that cross it.

A module with no heavy imports: the CLI loads it before any command runs.

Every failure a user can cause or meet ends as one line on stderr and an exit code:

* ``2``: bad input (:class:`GradTuneInputError`, a missing optional dependency, any
  ``ValueError``, a missing file, an output folder that cannot be written);
* ``1``: a run that failed (:class:`RunFailedError`: a diverged fine-tune, a full
  disk) or an internal error;
* ``130``: interrupted.

An internal error (an exception nobody anticipated) prints its traceback only with
``--debug``; without it, one line names it and asks for a bug report.

File-system errors are translated where outputs are written (:func:`writing`), so
the message names the path and what to do, chosen by ``errno``.
"""

from __future__ import annotations

import errno
import operator
import os
import sqlite3
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradtune._optional import MissingDependencyError

__all__ = ["GradTuneInputError", "RunFailedError", "DivergenceError", "OutputError", "StoreCorruptError", "StoreBusyError", "writing",
           "translate_os_error", "ensure_output_dir", "run_boundary", "one_line", "BUG_REPORT", "parse_int"]

BUG_REPORT = "this is a bug in gradtune; please report it with the command line and the output of --debug"


class GradTuneInputError(ValueError):
    """Raised when user input is malformed; the message says what and how to fix it."""


class RunFailedError(RuntimeError):
    """A run that could not produce a valid result (exit code 1)."""


class DivergenceError(RunFailedError):
    """Training produced a non-finite loss or head."""


class OutputError(GradTuneInputError):
    """An output path that cannot be written for a reason the user can fix (exit code 2)."""


class OutputFailedError(RunFailedError):
    """Writing an output failed for a reason of the machine: a full disk, an I/O error (exit code 1)."""


class StoreCorruptError(GradTuneInputError):
    """A results store that is not a readable gradtune store (exit code 2)."""


class StoreBusyError(OutputError):
    """A results store another process holds locked past the wait allowed (exit code 2)."""


# errno -> (what it means, what to do); the machine's faults fail the run, the others are bad input.
_ERRNO_HINTS: dict[int, tuple[str, str, bool]] = {
    errno.ENOSPC: ("the disk is full", "free space or write elsewhere", True),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or write elsewhere", True),
    errno.EIO: ("an I/O error occurred", "check the disk and retry", True),
    errno.EROFS: ("the file system is read-only", "choose a writable location", False),
    errno.EACCES: ("permission denied", "choose a location you may write, or fix its permissions", False),
    errno.EPERM: ("operation not permitted", "choose a location you may write, or fix its permissions", False),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a folder path", False),
    errno.EEXIST: ("a file is in the way", "remove it or choose another path", False),
    errno.EISDIR: ("the path is a folder", "give a file path", False),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path", False),
    errno.ELOOP: ("too many symbolic links", "resolve the links", False),
    errno.ENOENT: ("no such file or folder", "check the path", False),
}


def translate_os_error(err: OSError, what: str, path: str | os.PathLike | None = None) -> Exception:
    """The error to raise for ``err`` met while writing ``what`` at ``path``: an
    :class:`OutputFailedError` for a fault of the machine, else an :class:`OutputError`."""
    where = path if path is not None else err.filename
    meaning, todo, machine = _ERRNO_HINTS.get(err.errno or -1, (err.strerror or str(err), "check the path", True))
    msg = f"cannot write {what} {os.fsdecode(where) if where is not None else ''}: {meaning}; {todo}"
    return (OutputFailedError if machine else OutputError)(" ".join(msg.split()))


@contextmanager
def writing(what: str, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Translate any ``OSError`` raised inside into a one-line error naming ``what`` and ``path``."""
    try:
        yield
    except OSError as err:
        raise translate_os_error(err, what, path) from err


def ensure_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``path`` if needed and check that a file can be written in it, before any work
    is done (so a finished computation is never lost to an unwritable output folder)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {os.fsdecode(p)} is a file, not a folder; give a folder path")
    with writing(f"the output folder ({flag})", p):
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".gradtune-write-test-{os.getpid()}-{threading.get_ident()}"  # one per writer
        probe.write_bytes(b"")
        probe.unlink()
    return p


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a KeyError's quotes removed)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(str(text).split())
    return text or type(err).__name__


def _describe_sqlite(err: sqlite3.Error) -> str:
    text = one_line(err)
    if isinstance(err, sqlite3.OperationalError) and "readonly" in text:
        return (f"the results store is read-only ({text}); make it writable, or pass --out/--store with "
                "a new location")
    if isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return (f"the results store is in use by another process, which held its lock past the wait ({text}); "
                "wait for that process to finish, or write to another --out")
    if isinstance(err, sqlite3.OperationalError) and "disk" in text and "full" in text:
        return f"the disk holding the results store is full ({text}); free space and rerun"
    return (f"the results store cannot be used ({text}); restore it from a copy, or start a new one with "
            "--out/--store NEW")


def run_boundary(func: Callable[[], Any], command: str, *, debug: bool = False,
                 on_error: Callable[[int, str], None] | None = None) -> int:
    """Call ``func()`` and turn every exception into one line on stderr and an exit code.

    Parameters
    ----------
    func : callable () -> int or None
        The command.
    command : str
        Its name, the prefix of the message.
    debug : bool, default=False
        Print the traceback of every error (not only of internal ones) after the line.
    on_error : callable (exit code, message) -> None, optional
        Also told of every failure (``--json`` prints it as a JSON object on stdout).

    Returns
    -------
    int
        The command's code, 2 for bad input, 1 for a failed run or an internal error,
        130 when interrupted.
    """
    prefix = f"gradtune {command}: error:"

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"gradtune {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            code = int(func() or 0)
            sys.stdout.flush()  # a reader that left shows here, inside the boundary
            return code
    except KeyboardInterrupt:
        print(f"gradtune {command}: interrupted; completed results are kept on disk", file=sys.stderr)
        if on_error is not None:
            on_error(130, "interrupted")
        return 130
    except BrokenPipeError:  # the reader of stdout left (`| head`): stop quietly, as a SIGPIPE would
        _silence_stdout()
        return 141
    except Exception as err:  # noqa: BLE001 - the boundary: nothing escapes as a raw traceback
        code, msg = _classify(err)
        print(f"{prefix} {msg}", file=sys.stderr)
        if debug:
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        if on_error is not None:
            on_error(code, msg)
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test's capture)
        pass


def _classify(err: Exception) -> tuple[int, str]:
    """Exit code and one-line message of an exception that reached the boundary."""
    if isinstance(err, RunFailedError):
        return 1, one_line(err)
    if isinstance(err, (ValueError, MissingDependencyError)):
        return 2, one_line(err)
    if isinstance(err, sqlite3.Error):
        machine = isinstance(err, sqlite3.OperationalError) and ("full" in str(err) or "disk I/O" in str(err))
        return (1 if machine else 2), _describe_sqlite(err)
    if isinstance(err, OSError):
        if err.errno is None:  # raised by gradtune with its own message
            return 2, one_line(err)
        meaning, todo, machine = _ERRNO_HINTS.get(err.errno, (err.strerror or str(err), "check the path", True))
        where = f"{os.fsdecode(err.filename)}: " if err.filename is not None else ""
        return (1 if machine else 2), f"{where}{meaning}; {todo}"
    if isinstance(err, MemoryError):
        return 1, "out of memory; use smaller inputs or a machine with more memory"
    return 1, f"internal error {type(err).__name__}: {one_line(err)}; {BUG_REPORT}"


def parse_int(value: Any, name: str) -> int:
    """An integer from an int or an integer string, the error naming ``name``."""
    if isinstance(value, bool):
        raise GradTuneInputError(f"{name} must be an integer, got {value!r}")
    if hasattr(value, "__index__"):
        return operator.index(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise GradTuneInputError(f"{name} must be an integer, got {value!r}") from None

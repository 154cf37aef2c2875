"""Input checks shared by every public entry point.

All user-facing input errors are raised from here as :class:`GradTuneInputError`
(a ``ValueError``), with a message that says what arrived and how to fix it.
Public functions validate once at the edge, then call private code that assumes
valid input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gradtune._errors import GradTuneInputError, parse_int

__all__ = [
    "GradTuneInputError",
    "all_finite",
    "as_float_tensor",
    "as_label_tensor",
    "check_features",
    "check_labels",
    "check_scores",
    "check_same_length",
    "check_choice",
    "check_positive_int",
    "check_nonneg_float",
    "check_id_bounds",
    "check_device",
    "check_training_rows",
    "load_state_checked",
    "parse_int",
    "MAX_IDS",
    "make_generator",
    "make_numpy_rng",
]


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def all_finite(t: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or infinity.

    One sum instead of ``isfinite(t).all()`` (one pass, and no (N, d) bool temporary):
    a sum is finite only if every term is,
    or it overflowed, and only then are the values checked one by one.
    """
    if t.numel() == 0 or math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def shared_tensor(arr: np.ndarray) -> torch.Tensor:
    """``torch.as_tensor(arr)`` sharing memory, without torch's warning for read-only
    arrays (bundle views and memory maps are read here, never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(arr)


def as_float_tensor(x: Any, name: str, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert array-like to a floating tensor without copying when possible."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = shared_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise GradTuneInputError(
                f"{name} must be a numeric array, got {_describe(x)}: {err}"
            ) from None
    if not (t.is_floating_point()):
        if t.dtype == torch.bool or t.is_complex():
            raise GradTuneInputError(f"{name} must be real-valued numbers, got {_describe(x)}")
        t = t.to(torch.float32)
    if device is not None:
        t = t.to(device)
    return t


def check_features(x: Any, name: str = "features", *, ndim: int = 2,
                   check_finite: bool = True) -> torch.Tensor:
    """Return ``x`` as a float tensor of shape (N, d), rejecting NaN/inf and wrong ndim."""
    t = as_float_tensor(x, name)
    if t.ndim != ndim:
        hint = " (reshape a single sample with x[None, :])" if t.ndim == ndim - 1 else ""
        raise GradTuneInputError(
            f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}{hint}"
        )
    if check_finite and not all_finite(t):
        bad = int((~torch.isfinite(t)).any(dim=-1).sum()) if t.ndim > 1 else int((~torch.isfinite(t)).sum())
        raise GradTuneInputError(
            f"{name} contains NaN or infinite values in {bad} row(s); clean or drop those rows first"
        )
    return t


def as_label_tensor(y: Any, name: str = "labels", *, check_bounds: bool = True) -> torch.Tensor:
    """Convert to an int64 tensor of shape (N,), rejecting non-integer values (and, unless
    ``check_bounds`` is False, ids at or above :data:`MAX_IDS`)."""
    if isinstance(y, torch.Tensor):
        t = y
    else:
        try:
            arr = np.asarray(y)
        except (TypeError, ValueError) as err:
            raise GradTuneInputError(f"{name} must be an integer array: {err}") from None
        if arr.dtype.kind not in "biuf":
            raise GradTuneInputError(
                f"{name} must hold integer class ids, got dtype {arr.dtype}; map names to 0..C-1 first"
            )
        t = shared_tensor(arr)
    if t.ndim != 1:
        raise GradTuneInputError(f"{name} must be 1-dimensional (N,), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not all_finite(t):
            raise GradTuneInputError(f"{name} contains NaN or infinite values; labels must be integer class ids")
        if t.numel() and not bool((t == t.round()).all()):
            bad = t[t != t.round()][:3].tolist()
            raise GradTuneInputError(f"{name} must hold integer class ids, got non-integer values such as {bad}")
    t = t if t.dtype == torch.int64 else t.to(torch.int64)
    if check_bounds:
        check_id_bounds(t, name)
    return t


def check_labels(y: Any, n_classes: int | None = None, name: str = "labels",
                 *, n: int | None = None, check_range: bool = True) -> torch.Tensor:
    """Return labels as int64 (N,), checking range [0, n_classes) and length ``n``.

    ``check_range=False`` skips the range (a caller that checks it as it goes must
    then call this again with the range to raise the error).
    """
    t = as_label_tensor(y, name, check_bounds=not check_range)  # the range check below covers it
    if n is not None and t.shape[0] != n:
        raise GradTuneInputError(f"{name} has {t.shape[0]} entries but {n} were expected (one per sample)")
    if check_range and t.numel():
        lo, hi = torch.aminmax(t)
        lo, hi = int(lo), int(hi)
        _refuse_large_id(hi, name)
        if lo < 0:
            raise GradTuneInputError(f"{name} must be >= 0, found {lo}")
        if n_classes is not None and hi >= n_classes:
            raise GradTuneInputError(
                f"{name} must be < {n_classes} (the number of classes), found {hi}"
            )
    return t


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Return scores as float64 (N,), rejecting NaN, inf and negative values."""
    if isinstance(scores, torch.Tensor):
        arr = scores.detach().cpu().numpy()
    else:
        arr = np.asarray(scores)
    if arr.dtype.kind not in "biuf":
        raise GradTuneInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise GradTuneInputError(f"{name} must be 1-dimensional (N,), got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise GradTuneInputError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s)")
    if arr.size and arr.min() < 0:
        raise GradTuneInputError(f"{name} must be non-negative (they are norms), found {arr.min():g}")
    return arr


MIN_TRAINING_ROWS = 10
"""Fewer rows than this make a fine-tune that mostly memorizes them: warned about."""


def check_training_rows(labels: Any, name: str = "the fine-tuning rows") -> None:
    """Refuse a training set (labels of shape (N,)) that is empty or holds one class (a head
    trained on it only learns to predict that class); warn when it has few rows."""
    y = np.asarray(labels)
    if y.size == 0:
        raise GradTuneInputError(f"{name} are empty; give a bundle with held-out (or validation) rows")
    classes = np.unique(y)
    if classes.size < 2:
        raise GradTuneInputError(f"{name} hold a single class ({classes[0]}); fine-tuning on them would only "
                                 "learn to predict it. Give held-out rows of at least 2 classes")
    if y.size < MIN_TRAINING_ROWS:
        warnings.warn(f"{name} are only {y.size}; the fine-tuned head will mostly memorize them",
                      RuntimeWarning, stacklevel=2)


def check_same_length(**arrays: Any) -> int:
    """Check that every non-None argument has the same first dimension; return it."""
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise GradTuneInputError(f"inputs must have one row per sample, got lengths {desc}")
    return next(iter(lengths.values())) if lengths else 0


def check_choice(value: Any, name: str, options: Sequence[str]) -> str:
    if value not in options:
        raise GradTuneInputError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False, upper: int | None = None) -> int:
    """``value`` as an int, refusing bools, floats, negatives, zero (unless ``allow_zero``)
    and values above ``upper``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GradTuneInputError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise GradTuneInputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if upper is not None and value > upper:
        raise GradTuneInputError(f"{name} must be <= {upper}, got {value}")
    return int(value)


def check_nonneg_float(value: Any, name: str, *, positive: bool = False, upper: float | None = None) -> float:
    """``value`` as a finite float >= 0 (> 0 if ``positive``; < ``upper`` if given)."""
    if isinstance(value, (str, bytes, bool)):
        raise GradTuneInputError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GradTuneInputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        raise GradTuneInputError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value!r}")
    if upper is not None and v >= upper:
        raise GradTuneInputError(f"{name} must be < {upper:g}, got {value!r}")
    return v


MAX_IDS = 100_000
"""Most classes or groups an id array may imply: a larger id is a mistake, refused
before anything of that size is allocated."""


def check_id_bounds(t: torch.Tensor | np.ndarray, name: str, limit: int = MAX_IDS) -> None:
    """Refuse ids (class or group ids, int array of shape (N,)) at or above ``limit``, which
    would allocate per-id tables of that size."""
    if len(t) != 0:
        _refuse_large_id(int(t.max()), name, limit)


def _refuse_large_id(hi: int, name: str, limit: int = MAX_IDS) -> None:
    if hi >= limit:
        raise GradTuneInputError(
            f"{name} go up to {hi}, which implies {hi + 1} distinct ids; at most {limit} are supported "
            f"(map the ids to 0..K-1 first)")


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (checked before anything is loaded)."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GradTuneInputError(f"{name} {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise GradTuneInputError(f"{name} {device!r} asks for CUDA, but no CUDA device is available; use 'cpu'")
        if dev.index is not None and dev.index >= n:
            raise GradTuneInputError(f"{name} {device!r}: only {n} CUDA device(s) are available")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise GradTuneInputError(f"{name} {device!r} asks for MPS, which is not available here; use 'cpu'")
    elif dev.type == "meta":
        raise GradTuneInputError(f"{name} is the meta device, which holds no data; load real weights first")
    return dev


def load_state_checked(module: torch.nn.Module, state: Any, source: str) -> None:
    """``module.load_state_dict(state)``, with a mismatch (another architecture, other sizes)
    raised as one input error naming ``source`` instead of torch's multi-line RuntimeError."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err).strip())
        raise GradTuneInputError(f"{source} does not fit this model (a checkpoint of another architecture or "
                                 f"size?): {first[:300]}") from None


def make_generator(seed: int | torch.Generator | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator from a seed; an existing generator is passed through.

    ``None`` is rejected: every random choice in gradtune takes an explicit seed.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GradTuneInputError(
            f"seed must be an int or a torch.Generator (gradtune never uses global random state), got {seed!r}"
        )
    _check_seed_range(seed, -(2**63))
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def make_numpy_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed; an existing generator is passed through."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GradTuneInputError(
            f"seed must be an int or a numpy.random.Generator (gradtune never uses global random state), got {seed!r}"
        )
    _check_seed_range(seed, 0)
    return np.random.default_rng(int(seed))


def _check_seed_range(seed: int, lo: int) -> None:
    if not lo <= int(seed) < 2**64:
        raise GradTuneInputError(f"seed must be an integer in {lo}..2**64-1, got {seed}")

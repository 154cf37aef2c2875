"""Where a run's bundle comes from: picklable bundle sources, content fingerprints, caches.

* :class:`BundleSource` names the bundle of one (benchmark, seed): an offline benchmark
  built and cached on first use, a bundle file, or a module-level build function;
* :func:`bundle_fingerprint` / :func:`embedding_hash` are short content hashes (a run's id
  includes the fingerprint, so a changed bundle is a new run);
* :func:`cached_bundle` keeps built offline bundles on disk, :func:`load_cached` keeps the
  latest bundle in memory per process.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradtune._validation import GradTuneInputError
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle, load_bundle

__all__ = ["BundleSource", "bundle_fingerprint", "embedding_hash", "cached_bundle", "load_cached", "clear_cache"]


def _hash_arrays(arrays: Iterable[np.ndarray | None]) -> str:
    h = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def bundle_fingerprint(bundle: EmbeddingBundle) -> str:
    """A short content hash of everything a method can see (arrays, splits, head, groups)."""
    return _hash_arrays([bundle.features, bundle.labels, bundle.split.astype(str), bundle.logits,
                         bundle.early_logits, bundle.head_weight, bundle.head_bias, bundle.groups,
                         bundle.attributes])


def embedding_hash(bundle: EmbeddingBundle) -> str:
    """A short content hash of the embedded data alone (features, labels, groups)."""
    return _hash_arrays([bundle.features, bundle.labels, bundle.groups])


@dataclass(frozen=True)
class BundleSource:
    """A picklable recipe for the bundle of one (benchmark, seed).

    kind : {'offline', 'file', 'callable'}
        'offline': :func:`gradtune.experiments.offline.build_bundle`, cached in ``cache_dir``;
        'file': ``path`` (``{seed}`` replaced), validation rows split by the seed if needed;
        'callable': ``build(benchmark, seed)`` (picklable only if ``build`` is a module-level function).
    """

    benchmark: str
    seed: int
    kind: str
    path: str | None = None
    cache_dir: str | None = None
    build: Callable[[str, int], EmbeddingBundle] | None = field(default=None, compare=True)
    progress: bool = field(default=False, compare=False)

    def describe(self) -> str:
        if self.kind == "file":
            return f"file:{self.path}"
        if self.kind == "offline":
            return f"offline:{self.benchmark} (cache {self.cache_dir or 'default'})"
        return f"callable:{getattr(self.build, '__qualname__', self.build)}"

    def load(self) -> EmbeddingBundle:
        if self.kind == "file":
            path = Path(str(self.path).replace("{seed}", str(self.seed)))
            if not path.exists():
                raise FileNotFoundError(f"bundle {path} (benchmark {self.benchmark!r}, seed {self.seed}) does not exist")
            return load_bundle(path).resolve_heldout(self.seed)
        if self.kind == "offline":
            from gradtune.experiments.offline import (
                build_bundle,  # pulls in encoders and data packages
            )

            cache = None if self.cache_dir is None else Path(self.cache_dir)
            return cached_bundle(self.benchmark, self.seed, cache, build_bundle, progress=self.progress)
        if self.kind == "callable" and self.build is not None:
            return self.build(self.benchmark, self.seed)
        raise GradTuneInputError(f"unknown bundle source kind {self.kind!r}")


# One bundle kept per process (workers receive many runs of the same bundle in a row).
_BUNDLE_CACHE: dict[BundleSource, tuple[EmbeddingBundle, str, float]] = {}


def clear_cache() -> None:
    """Forget the bundle kept by :func:`load_cached` (before handing runs to other processes)."""
    _BUNDLE_CACHE.clear()


def load_cached(source: BundleSource) -> tuple[EmbeddingBundle, str, float]:
    """The bundle of ``source`` with its fingerprint and load seconds (0 when kept from the last call)."""
    hit = _BUNDLE_CACHE.get(source)
    if hit is not None:
        return hit[0], hit[1], 0.0
    _BUNDLE_CACHE.clear()
    t = time.perf_counter()
    bundle = source.load()
    fp = bundle_fingerprint(bundle)
    entry = (bundle, fp, time.perf_counter() - t)
    _BUNDLE_CACHE[source] = entry
    return entry


def _default_cache_dir() -> Path:
    from gradtune.embeddings.cache import default_cache_dir

    return Path(default_cache_dir())


def cached_bundle(name: str, seed: int, cache_dir: Path | None, build: Callable[..., EmbeddingBundle],
                  *, force: bool = False, progress: bool = True) -> EmbeddingBundle:
    """Load the bundle of (benchmark, seed) from the cache, or build and store it.

    The file name carries a hash of the benchmark's definition and the gradtune
    version, so a changed setup builds a new bundle; an unreadable file is rebuilt.
    """
    from gradtune import __version__
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS

    spec = OFFLINE_BENCHMARKS.get(name, name)
    key = hashlib.sha256(f"{__version__}|{spec!r}|{getattr(build, '__qualname__', build)}|{seed}".encode()
                         ).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = root / "bundles" / f"{name}-seed{seed}-{key}.npz"
    if path.exists() and not force:
        try:
            return load_bundle(path)
        except BundleError as err:
            warnings.warn(f"cached bundle {path} is unusable ({err}); it will be rebuilt", RuntimeWarning,
                          stacklevel=2)
    bundle = build(name, seed, cache_dir=cache_dir, progress=progress)
    bundle.save(path)
    return bundle

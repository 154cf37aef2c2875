"""The on-disk feature cache: hits, stale keys, corrupt files and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings import cache as cache_mod
from gradtune.embeddings.cache import FeatureCache, cache_key, hash_array, hash_texts


class Counter:
    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.value


def feats(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(7, 5)).astype(np.float32)


def test_hit_after_first_compute(tmp_path):
    c = FeatureCache(tmp_path)
    f = Counter(feats())
    a, hit_a = c.get_or_compute("bench-enc", "k1", f)
    b, hit_b = c.get_or_compute("bench-enc", "k1", f)
    assert (hit_a, hit_b) == (False, True) and f.calls == 1
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.float32 and (tmp_path / "bench-enc.npz").is_file()


def test_stale_key_is_rebuilt(tmp_path):
    c = FeatureCache(tmp_path)
    c.get_or_compute("e", "old-key", Counter(feats(0)))
    new = Counter(feats(1))
    out, hit = c.get_or_compute("e", "new-key", new)
    assert not hit and new.calls == 1
    np.testing.assert_array_equal(out, feats(1))
    assert c.load("e", "new-key") is not None and c.load("e", "old-key") is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no_key"])
def test_corrupt_file_is_rebuilt(tmp_path, damage):
    c = FeatureCache(tmp_path)
    c.save("e", "k", feats())
    path = c.path("e")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, features=feats())
    f = Counter(feats(2))
    with pytest.warns(RuntimeWarning) if damage != "no_key" else _nullcontext():
        out, hit = c.get_or_compute("e", "k", f)
    assert not hit and f.calls == 1
    np.testing.assert_array_equal(out, feats(2))
    np.testing.assert_array_equal(c.load("e", "k"), feats(2))  # rewritten, readable


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_non_finite_entry_is_rebuilt(tmp_path):
    c = FeatureCache(tmp_path)
    bad = feats()
    bad[0, 0] = np.nan
    c.save("e", "k", bad)
    with pytest.warns(RuntimeWarning, match="malformed"):
        assert c.load("e", "k") is None


def test_interrupted_write_leaves_old_entry_and_no_partial_file(tmp_path, monkeypatch):
    c = FeatureCache(tmp_path)
    c.save("e", "k", feats(0))

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        c.save("e", "k2", feats(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]  # no temporary left behind
    np.testing.assert_array_equal(c.load("e", "k"), feats(0))
    # get_or_compute still returns the features when the write fails
    with pytest.warns(RuntimeWarning, match="could not write"):
        out, hit = c.get_or_compute("e", "k3", Counter(feats(3)))
    assert not hit
    np.testing.assert_array_equal(out, feats(3))


def test_default_dir_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADTUNE_CACHE_DIR", str(tmp_path / "env"))
    assert FeatureCache().cache_dir == tmp_path / "env"
    assert FeatureCache(tmp_path / "arg").cache_dir == tmp_path / "arg"
    monkeypatch.delenv("GRADTUNE_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FeatureCache().cache_dir == tmp_path / "home" / ".cache" / "gradtune"
    # the XDG base-directory rule: an absolute XDG_CACHE_HOME is used, an empty or relative one ignored
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FeatureCache().cache_dir == tmp_path / "xdg" / "gradtune"
    from gradtune.data.offline.adult import default_adult_dir
    assert default_adult_dir() == tmp_path / "xdg" / "gradtune" / "adult"  # the same rule for Adult's wheel
    for ignored in ("", "relative/dir"):
        monkeypatch.setenv("XDG_CACHE_HOME", ignored)
        assert FeatureCache().cache_dir == tmp_path / "home" / ".cache" / "gradtune"
    monkeypatch.setenv("GRADTUNE_CACHE_DIR", str(tmp_path / "env"))  # the package's own variable wins
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FeatureCache().cache_dir == tmp_path / "env"
    with pytest.raises(ValueError, match="cache entry name"):
        FeatureCache(tmp_path).path("../escape")


def test_cache_key_content_sensitive_and_order_insensitive():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    k1 = cache_key({"x": a, "p": {"size": 64}, "enc": "e"})
    assert k1 == cache_key({"enc": "e", "p": {"size": 64}, "x": a.copy()})
    b = a.copy()
    b[0, 0] = 9
    assert k1 != cache_key({"x": b, "p": {"size": 64}, "enc": "e"})
    assert k1 != cache_key({"x": a, "p": {"size": 32}, "enc": "e"})
    assert hash_array(a) != hash_array(a.astype(np.int16))  # dtype is part of the hash
    assert hash_texts(["ab", "c"]) != hash_texts(["a", "bc"])  # length-prefixed

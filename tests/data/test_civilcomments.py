"""CivilComments reader on a fixture in WILDS v1.0's all_data_with_identities.csv format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.civilcomments import CIVILCOMMENTS_IDENTITIES, load_civilcomments
from gradtune.data.registry import PAPER_GROUP_COUNTS

# WILDS-like column list (the reader selects by name; order is not relied on).
BASE_COLUMNS = [
    "id", "comment_text", "split", "toxicity", "severe_toxicity", "obscene", "identity_attack",
    "insult", "threat", "male", "female", "transgender", "heterosexual",
    "homosexual_gay_or_lesbian", "christian", "jewish", "muslim", "hindu", "buddhist", "atheist",
    "black", "white", "asian", "latino", "physical_disability", "created_date",
]
APPENDED = ["LGBTQ", "other_religions", "asian_latino_etc", "disability_any", "identity_any",
            "num_identities"]

# (text, split, toxicity, identity values); the expected group is the comment after each row.
ROWS = [
    ("You are great", "train", 0.0, {}),                                        # g0
    ('Nice, "quoted", comment', "train", 0.1, {"jewish": 1.0}),                 # g0 (not one of the 8)
    ("multi\nline comment", "train", 0.2, {"male": 0.49}),                      # g0 (below 0.5)
    (None, "train", 0.0, {}),                                                   # g0, missing text
    ("women are people", "train", 0.3, {"female": 0.5}),                        # g1 (0.5 counts)
    ("faith", "train", 0.0, {"muslim": 0.8, "christian": 0.6}),                 # g1
    ("pride", "train", 0.499, {"homosexual_gay_or_lesbian": 1.0, "LGBTQ": 1}),  # g1 (0.499 not toxic)
    ("idiot", "train", 0.5, {}),                                                # g2 (0.5 is toxic)
    ("toxic about asians", "train", 0.9, {"asian": 1.0, "asian_latino_etc": 1}),  # g2 (not one of the 8)
    ("toxic about black people", "train", 0.7, {"black": 1.0}),                 # g3
    ("toxic about white men", "train", 1.0, {"white": 0.5, "male": 1.0}),       # g3
    ("toxic about religion", "train", 0.6, {"atheist": 1.0, "other_religions": 1}),  # g3
    ("fine", "val", 0.0, {}),                                                   # g0
    ("meh", "val", 0.2, {"male": 0.3, "female": 0.4}),                          # g0
    ("church", "val", 0.1, {"christian": 0.9}),                                 # g1
    ("stupid", "val", 0.8, {}),                                                 # g2
    ("toxic muslim", "val", 0.55, {"muslim": 0.5}),                             # g3
    ("toxic black women", "val", 0.95, {"female": 1.0, "black": 1.0}),          # g3
    ("NA", "test", 0.0, {}),                                                    # g0, literal text NA
    ("ok", "test", 0.0, {}),                                                    # g0
    ("temple", "test", 0.4, {"hindu": 1.0}),                                    # g0 (not one of the 8)
    ("white", "test", 0.3, {"white": 0.7}),                                     # g1
    ("gay", "test", 0.0, {"LGBTQ": 1}),                                         # g1
    ("men and women", "test", 0.0, {"male": 1.0, "female": 1.0}),               # g1
    ("dumb", "test", 0.6, {}),                                                  # g2
    ("toxic disability", "test", 0.75, {"physical_disability": 1.0, "disability_any": 1}),  # g2
    ("toxic christian", "test", 0.5, {"christian": 0.5}),                       # g3
]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 0, 0, 1, 2, 3, 3, 0, 0, 0, 1, 1, 1, 2, 2, 3]
# Hand counts (no-identity non-toxic, identity non-toxic, no-identity toxic, identity toxic).
COUNTS = {"train": (4, 3, 2, 3), "val": (2, 1, 1, 2), "test": (3, 3, 2, 1)}
# Hand counts of the 16 WILDS groups (identity, y=0), (identity, y=1), identity-major:
# male, female, LGBTQ, christian, muslim, other_religions, black, white.
WILDS_COUNTS = [1, 1, 2, 1, 2, 0, 2, 1, 1, 1, 0, 1, 0, 2, 1, 1]


def write_civilcomments(folder: Path, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (text, split, tox, ids) in enumerate(rows):
        rec = dict.fromkeys(BASE_COLUMNS + APPENDED, 0.0)
        rec.update(id=239579 + i, comment_text=text, split=split, toxicity=tox,
                   created_date="2017-01-01 00:00:00+00", **ids)
        rec["identity_any"] = int(any(v >= 0.5 for v in ids.values()))
        rec["num_identities"] = sum(v >= 0.5 for v in ids.values())
        records.append(rec)
    df = pd.DataFrame(records, columns=BASE_COLUMNS + APPENDED)
    path = folder / "all_data_with_identities.csv"
    df.to_csv(path)  # index=True: the unnamed 0..N-1 first column, as in WILDS
    (folder / "RELEASE_v1.0.txt").write_text("v1.0\n")
    return path


def test_paper_groups(tmp_path: Path) -> None:
    path = write_civilcomments(tmp_path)
    assert path.read_text().startswith(",id,comment_text,split,toxicity")
    ds = load_civilcomments(tmp_path)
    assert ds.name == "civilcomments" and len(ds) == len(ROWS)
    for split, counts in COUNTS.items():
        assert tuple(ds.group_counts(split).tolist()) == counts, split
    np.testing.assert_array_equal(ds.groups, GROUPS)
    np.testing.assert_array_equal(ds.labels, [int(t >= 0.5) for _, _, t, _ in ROWS])
    np.testing.assert_array_equal(ds.attributes, [g % 2 for g in GROUPS])
    np.testing.assert_array_equal(ds.split, [{"train": 0, "val": 1, "test": 2}[s] for _, s, _, _ in ROWS])
    assert ds.inputs[3] == "" and ds.inputs[18] == "NA"
    assert ds.inputs[1] == 'Nice, "quoted", comment' and ds.inputs[2] == "multi\nline comment"
    assert all(isinstance(t, str) for t in ds.inputs)
    assert ds.group_names == ["non-toxic,no identity", "non-toxic,identity",
                              "toxic,no identity", "toxic,identity"]
    assert ds.extra["identities"].shape == (len(ROWS), 8)
    assert ds.extra["identity_names"] == list(CIVILCOMMENTS_IDENTITIES)
    np.testing.assert_allclose(ds.extra["toxicity"], [t for _, _, t, _ in ROWS])
    assert "group_membership" not in ds.extra


def test_wilds_groups(tmp_path: Path) -> None:
    write_civilcomments(tmp_path / "civilcomments_v1.0")
    ds = load_civilcomments(tmp_path, groups="wilds")
    member = ds.extra["group_membership"]
    names = ds.extra["group_membership_names"]
    assert member.shape == (len(ROWS), 16) and member.dtype == bool
    assert names[:4] == ["male,y=0", "male,y=1", "female,y=0", "female,y=1"]
    assert names[-1] == "white,y=1" and len(names) == 16
    assert member.sum(axis=0).tolist() == WILDS_COUNTS
    assert member[23, names.index("male,y=0")] and member[23, names.index("female,y=0")]
    assert not member[2].any()  # male 0.49 is not a member
    # groups stay the four paper groups
    np.testing.assert_array_equal(ds.groups, GROUPS)
    assert ds.n_groups == 4
    sub = ds.subset(ds.indices("val"))
    assert sub.extra["group_membership"].shape == (6, 16)


def test_bad_groups_option(tmp_path: Path) -> None:
    write_civilcomments(tmp_path)
    with pytest.raises(ValueError, match="'paper' or 'wilds'"):
        load_civilcomments(tmp_path, groups="coarse")  # type: ignore[arg-type]


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        load_civilcomments(tmp_path)
    msg = str(exc.value)
    assert "all_data_with_identities.csv" in msg and "civilcomments_v1.0" in msg and "WILDS" in msg


def test_missing_identity_column(tmp_path: Path) -> None:
    path = write_civilcomments(tmp_path)
    pd.read_csv(path, index_col=0).drop(columns=["LGBTQ"]).to_csv(path)
    with pytest.raises(ValueError, match="LGBTQ"):
        load_civilcomments(tmp_path)


def test_bad_split_value(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[5] = ("x", "validation", 0.0, {})
    write_civilcomments(tmp_path, rows)
    with pytest.raises(ValueError, match="validation"):
        load_civilcomments(tmp_path)


def test_missing_toxicity(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[7] = ("x", "train", float("nan"), {})
    write_civilcomments(tmp_path, rows)
    with pytest.raises(ValueError, match="toxicity.*row 7"):
        load_civilcomments(tmp_path)


@pytest.mark.realdata
def test_real_civilcomments_matches_paper_table2() -> None:
    root = os.environ.get("GRADTUNE_DATA_ROOT")
    if not root:
        pytest.skip("GRADTUNE_DATA_ROOT not set: point it at a folder holding the real CivilComments "
                    "(civilcomments_v1.0/all_data_with_identities.csv) to check Table 2 counts")
    try:
        ds = load_civilcomments(root)
    except DatasetNotFoundError as exc:
        pytest.skip(f"CivilComments not found under GRADTUNE_DATA_ROOT={root}: {exc}")
    for split, counts in PAPER_GROUP_COUNTS["civilcomments"].items():
        assert tuple(ds.group_counts(split).tolist()) == counts, split

"""Dataset registry and the paper's Table 2 counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.celeba import load_celeba
from gradtune.data.civilcomments import load_civilcomments
from gradtune.data.multinli import load_multinli
from gradtune.data.registry import DATASETS, PAPER_GROUP_COUNTS, load_dataset
from gradtune.data.waterbirds import load_waterbirds

from .test_civilcomments import COUNTS as CC_COUNTS
from .test_civilcomments import write_civilcomments
from .test_waterbirds import COUNTS as WB_COUNTS
from .test_waterbirds import write_waterbirds


def test_registry_maps_names_to_readers() -> None:
    assert DATASETS == {
        "waterbirds": load_waterbirds,
        "celeba": load_celeba,
        "multinli": load_multinli,
        "civilcomments": load_civilcomments,
    }


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as exc:
        load_dataset("imagenet", tmp_path)
    msg = str(exc.value)
    assert "imagenet" in msg
    for name in DATASETS:
        assert name in msg


def test_load_dataset_dispatches_and_passes_kwargs(tmp_path: Path) -> None:
    write_waterbirds(tmp_path / "wb", images=False)
    ds = load_dataset("Waterbirds", tmp_path / "wb", check_images=False)
    assert ds.name == "waterbirds" and ds.group_counts(0).tolist() == list(WB_COUNTS[0])
    write_civilcomments(tmp_path / "cc")
    ds = load_dataset("civil_comments", tmp_path / "cc", groups="wilds")
    assert ds.name == "civilcomments" and "group_membership" in ds.extra
    assert tuple(ds.group_counts("test").tolist()) == CC_COUNTS["test"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_reader_raises_not_found_on_empty_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError):
        load_dataset(name, tmp_path)


def test_paper_counts_add_up_to_known_split_sizes() -> None:
    totals = {name: {s: sum(c) for s, c in splits.items()} for name, splits in PAPER_GROUP_COUNTS.items()}
    assert totals["waterbirds"] == {"train": 4795, "val": 1199, "test": 5794}
    assert sum(totals["waterbirds"].values()) == 11788  # every CUB image, once
    assert totals["celeba"] == {"train": 162770, "val": 19867, "test": 19962}
    assert sum(totals["multinli"].values()) == 412349
    assert totals["civilcomments"] == {"train": 269038, "val": 45180, "test": 133782}
    assert {len(c) for c in PAPER_GROUP_COUNTS["multinli"].values()} == {6}

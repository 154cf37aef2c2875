"""Waterbirds reader on a fixture written in group_DRO's exact metadata.csv format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.registry import PAPER_GROUP_COUNTS
from gradtune.data.waterbirds import find_waterbirds_dir, load_waterbirds, open_image

try:
    from PIL import Image

    HAVE_PIL = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_PIL = False

SPECIES = {
    0: ["013.Bobolink/Bobolink_0001_9261.jpg", "102.Western_Wood_Pewee/Western_Wood_Pewee_0003_795045.jpg"],
    1: ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", "086.Pacific_Loon/Pacific_Loon_0005_75433.jpg"],
}
PLACES = {0: "/b/bamboo_forest/00000042.jpg", 1: "/o/ocean/00000007.jpg"}

# Hand-chosen counts per split, groups (landbird,land) (landbird,water) (waterbird,land)
# (waterbird,water): the fixture writes exactly these many rows of each.
COUNTS = {0: (5, 2, 1, 3), 1: (2, 2, 1, 1), 2: (3, 3, 2, 2)}
N_ROWS = sum(sum(c) for c in COUNTS.values())  # 27


def write_waterbirds(folder: Path, *, images: bool = True, grayscale_first: bool = False) -> list[dict]:
    """Write metadata.csv (+ tiny images) into ``folder``; rows are interleaved by split."""
    rows = []
    for split, counts in COUNTS.items():
        for group, count in enumerate(counts):
            y, place = divmod(group, 2)
            for k in range(count):
                rows.append({"y": y, "place": place, "split": split, "k": k})
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, r in enumerate(rows):
        species, base = SPECIES[r["y"]][r["k"] % 2].split("/")
        fname = f"{species}/{base[:-4]}_{i}.jpg"
        r["img_filename"] = fname
        r["img_id"] = i + 1
        lines.append(f"{i + 1},{fname},{r['y']},{r['split']},{r['place']},{PLACES[r['place']]}")
        if images:
            path = folder / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            if HAVE_PIL:
                mode = "L" if grayscale_first and i == 0 else "RGB"
                Image.new(mode, (7 + i % 3, 5), color=(i * 9) % 255 if mode == "L" else (i, 50, 200)).save(
                    path, format="JPEG"
                )
            else:  # the reader only lists paths
                path.write_bytes(b"")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return rows


def test_reads_groups_splits_labels(tmp_path: Path) -> None:
    folder = tmp_path / "waterbird_complete95_forest2water2"
    rows = write_waterbirds(folder)
    ds = load_waterbirds(folder)
    assert ds.name == "waterbirds" and len(ds) == N_ROWS
    for split, counts in COUNTS.items():
        assert ds.group_counts(split).tolist() == list(counts)
    assert ds.group_counts("train").tolist() == [5, 2, 1, 3]
    np.testing.assert_array_equal(ds.labels, [r["y"] for r in rows])
    np.testing.assert_array_equal(ds.attributes, [r["place"] for r in rows])
    np.testing.assert_array_equal(ds.split, [r["split"] for r in rows])
    np.testing.assert_array_equal(ds.groups, [2 * r["y"] + r["place"] for r in rows])
    np.testing.assert_array_equal(ds.extra["img_id"], np.arange(1, N_ROWS + 1))
    assert ds.class_names == ["landbird", "waterbird"]
    assert ds.attribute_names == ["land", "water"]
    assert ds.group_names == ["landbird,land", "landbird,water", "waterbird,land", "waterbird,water"]
    for path, r in zip(ds.inputs, rows, strict=True):
        assert isinstance(path, str) and os.path.isabs(path) and os.path.isfile(path)
        assert path.endswith(os.path.join(*r["img_filename"].split("/")))
    assert ds.labels.dtype == np.int64 and ds.groups.dtype == np.int64


@pytest.mark.parametrize("top", ["waterbird_complete95_forest2water2", "waterbirds_v1.0"])
def test_root_may_be_parent(tmp_path: Path, top: str) -> None:
    write_waterbirds(tmp_path / top, images=False)
    ds = load_waterbirds(tmp_path, check_images=False)
    assert len(ds) == N_ROWS
    assert find_waterbirds_dir(tmp_path) == (tmp_path / top).resolve()
    assert all(p.startswith(str((tmp_path / top).resolve())) for p in ds.inputs)


def test_subset_keeps_alignment(tmp_path: Path) -> None:
    write_waterbirds(tmp_path, images=False)
    ds = load_waterbirds(tmp_path, check_images=False)
    sub = ds.subset(ds.indices("val"))
    assert len(sub) == sum(COUNTS[1])
    assert sub.group_counts("val").tolist() == list(COUNTS[1])
    np.testing.assert_array_equal(sub.extra["img_id"], ds.extra["img_id"][ds.indices("val")])


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow not installed")
def test_open_image_gives_rgb(tmp_path: Path) -> None:
    write_waterbirds(tmp_path, grayscale_first=True)
    ds = load_waterbirds(tmp_path)
    img = open_image(ds.inputs[0])  # written as grayscale
    assert img.mode == "RGB" and img.size == (7, 5)
    assert open_image(Path(ds.inputs[1])).mode == "RGB"


def test_missing_metadata_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        load_waterbirds(tmp_path)
    msg = str(exc.value)
    assert "metadata.csv" in msg
    assert "waterbird_complete95_forest2water2.tar.gz" in msg and "waterbirds_v1.0" in msg
    assert "group_DRO" in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_images(tmp_path: Path) -> None:
    write_waterbirds(tmp_path, images=False)
    with pytest.raises(DatasetNotFoundError, match="not extracted"):
        load_waterbirds(tmp_path)
    assert len(load_waterbirds(tmp_path, check_images=False)) == N_ROWS


def test_missing_column(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("img_id,img_filename,y,split\n1,a/b.jpg,0,0\n")
    with pytest.raises(ValueError, match="place"):
        load_waterbirds(tmp_path, check_images=False)


@pytest.mark.parametrize(("col", "value"), [("y", "2"), ("place", "-1"), ("split", "3"), ("split", "")])
def test_out_of_range_values(tmp_path: Path, col: str, value: str) -> None:
    row = {"y": "0", "split": "0", "place": "1"}
    row[col] = value
    (tmp_path / "metadata.csv").write_text(
        "img_id,img_filename,y,split,place,place_filename\n"
        "1,001.A/a_1.jpg,0,0,0,/b/bamboo_forest/1.jpg\n"
        f"2,001.A/a_2.jpg,{row['y']},{row['split']},{row['place']},/o/ocean/2.jpg\n"
    )
    with pytest.raises(ValueError, match=rf"{col}.*row 1"):
        load_waterbirds(tmp_path, check_images=False)


@pytest.mark.realdata
def test_real_waterbirds_matches_paper_table2() -> None:
    root = os.environ.get("GRADTUNE_DATA_ROOT")
    if not root:
        pytest.skip("GRADTUNE_DATA_ROOT not set: point it at a folder holding the real Waterbirds "
                    "(waterbird_complete95_forest2water2/ or waterbirds_v1.0/) to check Table 2 counts")
    try:
        ds = load_waterbirds(root, check_images=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"Waterbirds not found under GRADTUNE_DATA_ROOT={root}: {exc}")
    for split, counts in PAPER_GROUP_COUNTS["waterbirds"].items():
        assert tuple(ds.group_counts(split).tolist()) == counts, split

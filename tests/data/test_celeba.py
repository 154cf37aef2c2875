"""CelebA reader on fixtures in the official txt, Kaggle CSV and metadata-CSV formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gradtune.data.base import DatasetNotFoundError
from gradtune.data.celeba import load_celeba
from gradtune.data.registry import PAPER_GROUP_COUNTS

ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
BLOND, MALE = 9, 20

# Hand-chosen counts per split for groups (not blond,female) (not blond,male) (blond,female)
# (blond,male); the fixture writes exactly these rows.
COUNTS = {0: (6, 5, 3, 1), 1: (2, 2, 1, 1), 2: (3, 2, 2, 1)}
N_ROWS = sum(sum(c) for c in COUNTS.values())  # 29


def make_rows() -> list[dict]:
    rows = []
    for split, counts in COUNTS.items():
        for group, count in enumerate(counts):
            blond, male = divmod(group, 2)
            rows.extend({"blond": blond, "male": male, "split": split} for _ in range(count))
    rng = np.random.default_rng(1)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for i, r in enumerate(rows):
        r["file"] = f"{i + 1:06d}.jpg"  # 1-based, like 000001.jpg
        # Neighbours of Blond_Hair/Male get the opposite value, so an off-by-one column
        # (e.g. pandas shifting the 40 names over 41 fields) is caught.
        vals = [1 if (j * 7 + i) % 3 == 0 else -1 for j in range(40)]
        for j in (BLOND - 1, BLOND + 1):
            vals[j] = -1 if r["blond"] else 1
        for j in (MALE - 1, MALE + 1):
            vals[j] = -1 if r["male"] else 1
        vals[BLOND] = 1 if r["blond"] else -1
        vals[MALE] = 1 if r["male"] else -1
        r["vals"] = vals
    return rows


def write_images(img_dir: Path, rows: list[dict]) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (img_dir / r["file"]).write_bytes(b"")  # the reader only lists paths


def write_official(folder: Path, rows: list[dict], *, shuffle_partition: bool = False,
                   anno: str = "", eval_: str = "", newline: str = "\n") -> None:
    """list_attr_celeba.txt + list_eval_partition.txt as on the CelebA site."""
    attr_dir, eval_dir = folder / anno, folder / eval_
    attr_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows)), " ".join(ATTRS) + " "]  # the real line 2 ends with a space
    for r in rows:
        # values right-aligned in 3-character fields: "000001.jpg -1  1  1 -1 ..."
        lines.append(r["file"] + "".join(f"{v:3d}" for v in r["vals"]))
    (attr_dir / "list_attr_celeba.txt").write_text(newline.join(lines) + newline)
    order = list(range(len(rows)))
    if shuffle_partition:
        order = list(np.random.default_rng(2).permutation(len(rows)))
    part = [f"{rows[i]['file']} {rows[i]['split']}" for i in order]
    (eval_dir / "list_eval_partition.txt").write_text(newline.join(part) + newline)


def write_kaggle(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image_id," + ",".join(ATTRS)]
    lines += [r["file"] + "," + ",".join(str(v) for v in r["vals"]) for r in rows]
    (folder / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
    part = ["image_id,partition"] + [f"{r['file']},{r['split']}" for r in rows]
    (folder / "list_eval_partition.csv").write_text("\n".join(part) + "\n")


def write_metadata(folder: Path, rows: list[dict], name: str = "celeba_metadata.csv") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Column order and extra columns differ from what the reader needs: it selects by name.
    lines = ["image_id,split,place,img_filename,y,extra"]
    lines += [
        f"{i},{r['split']},{r['male']},img_align_celeba/{r['file']},{r['blond']},x"
        for i, r in enumerate(rows)
    ]
    (folder / name).write_text("\n".join(lines) + "\n")


def check(ds, rows: list[dict], img_dir: Path) -> None:
    assert ds.name == "celeba" and len(ds) == N_ROWS
    for split, counts in COUNTS.items():
        assert ds.group_counts(split).tolist() == list(counts), split
    np.testing.assert_array_equal(ds.labels, [r["blond"] for r in rows])
    np.testing.assert_array_equal(ds.attributes, [r["male"] for r in rows])
    np.testing.assert_array_equal(ds.split, [r["split"] for r in rows])
    np.testing.assert_array_equal(ds.groups, [2 * r["blond"] + r["male"] for r in rows])
    assert ds.inputs == [str(img_dir.resolve() / r["file"]) for r in rows]
    assert all(os.path.isfile(p) for p in ds.inputs)
    assert ds.class_names == ["not blond", "blond"] and ds.attribute_names == ["female", "male"]
    assert ds.group_names == ["not blond,female", "not blond,male", "blond,female", "blond,male"]


@pytest.mark.parametrize("shuffle_partition", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_official_txt(tmp_path: Path, shuffle_partition: bool, newline: str) -> None:
    rows = make_rows()
    write_official(tmp_path, rows, shuffle_partition=shuffle_partition, newline=newline)
    write_images(tmp_path / "img_align_celeba", rows)
    ds = load_celeba(tmp_path)
    assert ds.extra["variant"] == "official"
    check(ds, rows, tmp_path / "img_align_celeba")
    assert ds.group_counts("train").tolist() == [6, 5, 3, 1]


def test_official_site_layout_anno_eval_img(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path / "CelebA", rows, anno="Anno", eval_="Eval")
    write_images(tmp_path / "CelebA" / "Img" / "img_align_celeba", rows)
    ds = load_celeba(tmp_path, variant="official")
    check(ds, rows, tmp_path / "CelebA" / "Img" / "img_align_celeba")


def test_kaggle_csv_with_nested_images(tmp_path: Path) -> None:
    rows = make_rows()
    write_kaggle(tmp_path, rows)
    nested = tmp_path / "img_align_celeba" / "img_align_celeba"
    write_images(nested, rows)
    ds = load_celeba(tmp_path)
    assert ds.extra["variant"] == "kaggle"
    check(ds, rows, nested)


@pytest.mark.parametrize("name", ["celeba_metadata.csv", "metadata.csv"])
def test_metadata_csv(tmp_path: Path, name: str) -> None:
    rows = make_rows()
    write_metadata(tmp_path / "celeba", rows, name)
    write_images(tmp_path / "celeba" / "img_align_celeba", rows)
    ds = load_celeba(tmp_path)
    assert ds.extra["variant"] == "metadata"
    check(ds, rows, tmp_path / "celeba" / "img_align_celeba")


def test_auto_prefers_official_and_variant_can_be_forced(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path, rows)
    flipped = [dict(r, split=(r["split"] + 1) % 3) for r in rows]
    write_metadata(tmp_path, flipped)
    write_images(tmp_path / "img_align_celeba", rows)
    assert load_celeba(tmp_path).extra["variant"] == "official"
    forced = load_celeba(tmp_path, variant="metadata")
    np.testing.assert_array_equal(forced.split, [r["split"] for r in flipped])


def test_nothing_found_names_files_and_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        load_celeba(tmp_path)
    msg = str(exc.value)
    for needle in ("list_attr_celeba.txt", "list_eval_partition.txt", "list_attr_celeba.csv",
                   "celeba_metadata.csv", "img_align_celeba", "mmlab.ie.cuhk.edu.hk", "Kaggle"):
        assert needle in msg


def test_requested_variant_missing(tmp_path: Path) -> None:
    rows = make_rows()
    write_kaggle(tmp_path, rows)
    (tmp_path / "list_attr_celeba.txt").write_text("1\n" + " ".join(ATTRS) + "\n")
    with pytest.raises(DatasetNotFoundError, match=r"list_eval_partition\.txt.*mmlab"):
        load_celeba(tmp_path, variant="official")
    with pytest.raises(DatasetNotFoundError, match="celeba_metadata.csv"):
        load_celeba(tmp_path, variant="metadata")


def test_missing_images(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path, rows)
    with pytest.raises(DatasetNotFoundError, match="img_align_celeba"):
        load_celeba(tmp_path)
    ds = load_celeba(tmp_path, check_images=False)
    assert ds.inputs[0] == str(tmp_path.resolve() / "img_align_celeba" / rows[0]["file"])
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(DatasetNotFoundError, match="empty or incomplete"):
        load_celeba(tmp_path)


def test_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        load_celeba(tmp_path, variant="csv")  # type: ignore[arg-type]


def test_truncated_attr_file(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path, rows)
    attr = tmp_path / "list_attr_celeba.txt"
    attr.write_text("\n".join(attr.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(ValueError, match="truncated"):
        load_celeba(tmp_path, check_images=False)


def test_attr_file_without_count_line(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path, rows)
    attr = tmp_path / "list_attr_celeba.txt"
    attr.write_text("\n".join(attr.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_celeba(tmp_path, check_images=False)


def test_bad_attribute_value(tmp_path: Path) -> None:
    rows = make_rows()
    rows[4]["vals"][BLOND] = 0
    write_official(tmp_path, rows)
    with pytest.raises(ValueError, match="Blond_Hair.*row 4"):
        load_celeba(tmp_path, check_images=False)


def test_partition_missing_an_image(tmp_path: Path) -> None:
    rows = make_rows()
    write_official(tmp_path, rows, shuffle_partition=True)
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("\n".join(part.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="no split for 1 image"):
        load_celeba(tmp_path, check_images=False)


def test_metadata_missing_column(tmp_path: Path) -> None:
    (tmp_path / "celeba_metadata.csv").write_text("img_filename,y,split\n000001.jpg,0,0\n")
    with pytest.raises(ValueError, match="place"):
        load_celeba(tmp_path, check_images=False)


@pytest.mark.realdata
def test_real_celeba_matches_paper_table2() -> None:
    root = os.environ.get("GRADTUNE_DATA_ROOT")
    if not root:
        pytest.skip("GRADTUNE_DATA_ROOT not set: point it at a folder holding the real CelebA "
                    "(celeba/ with list_attr_celeba.txt, list_eval_partition.txt) to check Table 2 counts")
    try:
        ds = load_celeba(root, check_images=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"CelebA not found under GRADTUNE_DATA_ROOT={root}: {exc}")
    for split, counts in PAPER_GROUP_COUNTS["celeba"].items():
        assert tuple(ds.group_counts(split).tolist()) == counts, split

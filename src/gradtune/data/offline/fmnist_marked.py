"""Fashion-MNIST with three or more classes and a mark tied mostly to one of them.

The multi-class member of the injected-shortcut family (MultiNLI-like: negation words
go mostly with "contradiction"). Each image gets a binary attribute, the *mark*: a red
background (``shortcut="background"``; blue without the mark), vertical stripes
(``shortcut="stripes"``; horizontal without) or a full-brightness item (``shortcut="brightness"``;
dimmed without). In training and validation the mark is on
``agreement`` of the tied class's images and on ``1 - agreement`` of every other class's;
test images carry it on exactly half of each class, so every (class, mark) group is
equally large there.

Group ids are ``2 * label + mark``. The images come from the same IDX files as
:class:`~gradtune.data.offline.fmnist.FmnistSpurious` (train and validation from the
official training file, test from the official test file), drawn with a fixed seed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from gradtune.data.base import SPLIT_CODES, GroupedDataset
from gradtune.data.offline.fmnist import (
    ATTRIBUTE_NAMES,
    BUILD_SEED,
    FMNIST_CLASS_NAMES,
    SHORTCUTS,
    _pick,
    check_split_sizes,
    compose,
    compose_shortcut,
    read_fmnist,
)

__all__ = ["FmnistMarked"]


def _marks(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(share * n)`` of ``n`` rows marked (1), in random order, (n,) int64."""
    out = np.zeros(n, dtype=np.int64)
    out[:int(round(share * n))] = 1
    return rng.permutation(out)


@dataclass(frozen=True)
class FmnistMarked:
    """A callable loader: C >= 3 Fashion-MNIST classes, a mark tied mostly to one.

    Parameters
    ----------
    classes : tuple of int
        Fashion-MNIST class ids of labels 0..C-1 (at least 3, all different).
    tied_class : int
        The label (0..C-1) the mark goes with.
    shortcut : {"background", "stripes", "brightness"}
    n_train, n_val, n_test : int
        Images per class in each split (even numbers).
    agreement : float in [0, 1]
        Share of the tied class carrying the mark in training and validation (and share
        of every other class without it).
    name : str
    """

    classes: tuple[int, ...] = (0, 2, 4)
    tied_class: int = 2
    shortcut: str = "background"
    n_train: int = 1800
    n_val: int = 1200
    n_test: int = 600
    agreement: float = 0.9
    name: str = "fmnist-marked"

    def __post_init__(self) -> None:
        cls = tuple(int(c) for c in self.classes)
        if len(cls) < 3 or len(set(cls)) != len(cls) or not all(0 <= c < 10 for c in cls):
            raise ValueError(f"classes must be 3 or more different Fashion-MNIST class ids in 0..9, "
                             f"got {self.classes!r}")
        object.__setattr__(self, "classes", cls)
        if not 0 <= int(self.tied_class) < len(cls):
            raise ValueError(f"tied_class must be a label in 0..{len(cls) - 1}, got {self.tied_class!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {list(SHORTCUTS)}, got {self.shortcut!r}")
        check_split_sizes(self)
        if not 0.0 <= float(self.agreement) <= 1.0:
            raise ValueError(f"agreement must lie in [0, 1], got {self.agreement!r}")

    def params(self) -> dict:
        out = asdict(self)
        out["classes"] = list(self.classes)
        return out

    def __call__(self, root: str | os.PathLike[str] | None = None) -> GroupedDataset:
        tr_x, tr_y, te_x, te_y = read_fmnist(root)
        rng = np.random.default_rng([BUILD_SEED, len(self.classes)])
        tr_pick = _pick(tr_y, self.classes, (self.n_train, self.n_val), rng, "train")
        te_pick = _pick(te_y, self.classes, (self.n_test,), rng, "t10k")
        images, labels, marks, split, source = [], [], [], [], []
        for code, x, picks, block in (("train", tr_x, tr_pick, 0), ("val", tr_x, tr_pick, 1),
                                      ("test", te_x, te_pick, 0)):
            for label in range(len(self.classes)):
                idx = picks[label][block]
                share = 0.5 if code == "test" else (
                    self.agreement if label == self.tied_class else 1.0 - self.agreement)
                images.append(x[idx])
                labels.append(np.full(idx.size, label, dtype=np.int64))
                marks.append(_marks(idx.size, share, rng))
                split.append(np.full(idx.size, SPLIT_CODES[code], dtype=np.int64))
                source.append(idx)
        y, a = np.concatenate(labels), np.concatenate(marks)
        # attribute 1 (the mark) is drawn as the red background / vertical stripes
        if self.shortcut == "background":
            rgb = compose(np.concatenate(images), 1 - a)
            attr_names = [f"no mark ({ATTRIBUTE_NAMES[1]})", f"mark ({ATTRIBUTE_NAMES[0]})"]
        else:
            rgb, names = compose_shortcut(np.concatenate(images), a, self.shortcut)
            attr_names = [f"no mark ({names[0]})", f"mark ({names[1]})"]
        class_names = [FMNIST_CLASS_NAMES[c] for c in self.classes]
        return GroupedDataset(self.name, rgb, y, a, 2 * y + a, np.concatenate(split), class_names,
                              attr_names, [f"{c},{b}" for c in class_names for b in attr_names],
                              {"source_index": np.concatenate(source)})

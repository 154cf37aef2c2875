"""Fashion-MNIST sneaker vs ankle boot on an INJECTED red/blue background.

This is a synthetic spurious correlation built from real images, in the spirit of
Waterbirds (objects pasted on backgrounds): the background colour is not part of
Fashion-MNIST; this module adds it, with a correlation to the class that we choose.

Task
----
* label: 0 sneaker (Fashion-MNIST class 7), 1 ankle boot (class 9);
* attribute: background colour, 0 red / 1 blue; red "agrees" with sneaker and blue
  with ankle boot; groups ``2 * label + attribute`` (sneaker,red / sneaker,blue /
  ankle-boot,red / ankle-boot,blue).

Construction (fixed, independent of the experiment seed; defaults)
------------------------------------------------------------------
* 6,000 images, classes balanced: train 3,600 and validation 1,200 drawn without
  overlap from the official training file, test 1,200 from the official test file
  (``numpy.random.default_rng(BUILD_SEED)`` picks the images per class);
* the background agrees with the class for exactly 95% of each class's training images
  and 50% of each class's validation and test images (so validation and test are
  group-balanced, and the minority groups hold 90 training images each);
* compositing: with ``a = pixel / 255`` (Fashion-MNIST items are bright on black),
  ``rgb = a * pixel + (1 - a) * background`` (:data:`BACKGROUNDS`), so the item keeps
  its grey shading and the empty area takes the background colour.

Files
-----
The four IDX files of the Fashion-MNIST GitHub repository
(``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``), read with numpy.
Looked up in ``$GRADTUNE_FASHION_MNIST_DIR``, else in
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gradtune.data.base import SPLIT_CODES, DatasetNotFoundError, GroupedDataset

__all__ = ["FMNIST_FILES", "DEFAULT_DIR", "BUILD_SEED", "BACKGROUNDS", "FMNIST_CLASS_NAMES",
           "SHORTCUTS", "FmnistSpurious", "find_fmnist_dir", "fmnist_files", "read_idx", "compose",
           "stripe_mask", "check_split_sizes", "compose_brightness", "compose_shortcut", "load_fmnist_spurious"]

FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "GRADTUNE_FASHION_MNIST_DIR"
BUILD_SEED = 20_240_603
"""Fixed seed of the image choice and background assignment (not the experiment seed)."""
SOURCE_CLASSES = (7, 9)
"""Fashion-MNIST class ids of sneaker and ankle boot (the default class pair)."""
FMNIST_CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle-boot")
"""Names of the ten Fashion-MNIST classes, by class id."""
SHORTCUTS = ("background", "stripes", "brightness")
"""Kinds of injected shortcut: a red/blue background, horizontal/vertical stripes on the item,
or a dimmed / full-brightness item on a grey background (a global brightness cue)."""
STRIPE_PERIOD = 4
"""Stripe period in pixels of the 28 x 28 image (2 bright rows/columns, 2 dimmed)."""
STRIPE_DIM = 0.35
"""Brightness factor of the dimmed stripes."""
BACKGROUNDS = np.array([[200, 30, 30], [30, 60, 200]], dtype=np.float32)
"""RGB of the red (attribute 0) and blue (attribute 1) backgrounds, shape (2, 3)."""
CLASS_NAMES = ["sneaker", "ankle-boot"]
ATTRIBUTE_NAMES = ["red", "blue"]
STRIPE_NAMES = ["horizontal", "vertical"]
BRIGHTNESS_NAMES = ["dim", "bright"]
BRIGHTNESS_LEVELS = np.array([0.45, 1.0], dtype=np.float32)
"""Brightness factor of the item for attribute 0 (dim) and 1 (bright)."""
BRIGHTNESS_BACKGROUND = 60.0
"""Grey level of the background under the brightness shortcut (items are brighter)."""
_INSTALL = (
    f"Install the Debian package with `apt-get install dataset-fashion-mnist` (files in "
    f"{DEFAULT_DIR}), or point {ENV_VAR} at a folder holding the four IDX .gz files of "
    "github.com/zalandoresearch/fashion-mnist (data/fashion/)."
)


def find_fmnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    Parameters
    ----------
    root : path, optional
        Default: ``$GRADTUNE_FASHION_MNIST_DIR`` if set, else :data:`DEFAULT_DIR`.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing; the message says how to install them.
    """
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_DIR
    folder = Path(root).expanduser()
    missing = [name for name in FMNIST_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"Fashion-MNIST: {', '.join(missing)} not found in {folder}. "
                                   f"{_INSTALL}")
    return folder.resolve()


def fmnist_files(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Paths of the four IDX files (for cache keys and provenance)."""
    folder = find_fmnist_dir(root)
    return [folder / name for name in FMNIST_FILES.values()]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a (gzip-compressed) IDX file of unsigned bytes.

    Returns
    -------
    np.ndarray, uint8, of the shape in the header: (N,) labels or (N, 28, 28) images.

    Raises
    ------
    ValueError
        If the magic number, the data type or the size does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"Fashion-MNIST: cannot read {path} (truncated or not gzip?): {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"Fashion-MNIST: {path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"Fashion-MNIST: {path} holds IDX type 0x{raw[2]:02x}; expected unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"Fashion-MNIST: {path} is truncated inside its header")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(f"Fashion-MNIST: {path} has {len(raw) - header} data bytes; its header "
                         f"{dims} needs {expected} (truncated file?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def compose(images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Paste grey items onto their background colour.

    Parameters
    ----------
    images : (N, H, W) uint8, bright items on black
    attributes : (N,) int, 0 red / 1 blue

    Returns
    -------
    (N, H, W, 3) uint8 RGB images.
    """
    x = images.astype(np.float32)[..., None]  # (N, H, W, 1)
    a = x / 255.0
    bg = BACKGROUNDS[np.asarray(attributes, dtype=np.int64)][:, None, None, :]  # (N, 1, 1, 3)
    return np.clip(np.rint(a * x + (1.0 - a) * bg), 0, 255).astype(np.uint8)


def stripe_mask(height: int, width: int, vertical: bool) -> np.ndarray:
    """Brightness factors of the stripe texture, shape (height, width), float32.

    Rows (``vertical=False``) or columns (``vertical=True``) alternate in blocks of
    ``STRIPE_PERIOD // 2`` between 1 and :data:`STRIPE_DIM`.
    """
    line = np.where((np.arange(height if not vertical else width) % STRIPE_PERIOD)
                    < STRIPE_PERIOD // 2, 1.0, STRIPE_DIM).astype(np.float32)
    return np.broadcast_to(line[None, :] if vertical else line[:, None], (height, width))


def compose_stripes(images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Overlay a stripe texture on the items (the background stays black).

    Parameters
    ----------
    images : (N, H, W) uint8, bright items on black
    attributes : (N,) int, 0 horizontal / 1 vertical stripes

    Returns
    -------
    (N, H, W, 3) uint8 RGB images (grey: the three channels are equal).
    """
    n, h, w = images.shape
    masks = np.stack([stripe_mask(h, w, False), stripe_mask(h, w, True)])  # (2, H, W)
    out = images.astype(np.float32) * masks[np.asarray(attributes, dtype=np.int64)]
    grey = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def check_split_sizes(spec: object, keys: tuple[str, ...] = ("n_train", "n_val", "n_test")) -> None:
    """Raise ValueError unless each of ``spec``'s split sizes is an even int >= 2 (classes
    are balanced, so every split is drawn in halves)."""
    for key in keys:
        n = getattr(spec, key)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2 or n % 2:
            raise ValueError(f"{key} must be an even number >= 2, got {n!r}")


def compose_brightness(images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Scale each item's brightness by its attribute, on a fixed grey background.

    Parameters
    ----------
    images : (N, H, W) uint8, bright items on black
    attributes : (N,) int, 0 dim / 1 bright (:data:`BRIGHTNESS_LEVELS`)

    Returns
    -------
    (N, H, W, 3) uint8 RGB images (grey: the three channels are equal).
    """
    x = images.astype(np.float32)
    level = BRIGHTNESS_LEVELS[np.asarray(attributes, dtype=np.int64)][:, None, None]  # (N, 1, 1)
    a = x / 255.0
    out = a * (x * level) + (1.0 - a) * BRIGHTNESS_BACKGROUND
    grey = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def compose_shortcut(images: np.ndarray, attributes: np.ndarray, shortcut: str) -> tuple[np.ndarray, list[str]]:
    """(N, H, W) uint8 items with the ``shortcut`` kind drawn from (N,) attributes:
    (N, H, W, 3) uint8 RGB images, and the two attribute names."""
    if shortcut == "background":
        return compose(images, attributes), list(ATTRIBUTE_NAMES)
    if shortcut == "stripes":
        return compose_stripes(images, attributes), list(STRIPE_NAMES)
    if shortcut == "brightness":
        return compose_brightness(images, attributes), list(BRIGHTNESS_NAMES)
    raise ValueError(f"shortcut must be one of {list(SHORTCUTS)}, got {shortcut!r}")


def read_fmnist(root: str | os.PathLike[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four IDX arrays: train images (N, 28, 28), train labels (N,), test images, test labels."""
    folder = find_fmnist_dir(root)
    tr_x = read_idx(folder / FMNIST_FILES["train_images"])
    tr_y = read_idx(folder / FMNIST_FILES["train_labels"])
    te_x = read_idx(folder / FMNIST_FILES["test_images"])
    te_y = read_idx(folder / FMNIST_FILES["test_labels"])
    for x, y, what in ((tr_x, tr_y, "train"), (te_x, te_y, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"Fashion-MNIST: {what} images {x.shape} and labels {y.shape} do not match")
    return tr_x, tr_y, te_x, te_y


def _pick(labels: np.ndarray, classes: tuple[int, int], per_class: tuple[int, ...],
          rng: np.random.Generator, source: str) -> list[list[np.ndarray]]:
    """For each source class, disjoint random index blocks of the requested sizes."""
    out = []
    for cls in classes:
        idx = np.flatnonzero(labels == cls)
        need = sum(per_class)
        if idx.size < need:
            raise ValueError(f"Fashion-MNIST: the {source} file has {idx.size} images of class "
                             f"{cls}; {need} are needed (lower the split sizes)")
        idx = rng.permutation(idx)
        cuts = np.cumsum((0,) + per_class)
        out.append([np.sort(idx[cuts[i]:cuts[i + 1]]) for i in range(len(per_class))])
    return out


def _backgrounds(label: int, n: int, agreement: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(agreement * n)`` of ``n`` images get the class's own attribute, (n,) int64."""
    n_agree = int(round(agreement * n))
    attrs = np.full(n, 1 - label, dtype=np.int64)
    attrs[:n_agree] = label
    return rng.permutation(attrs)


@dataclass(frozen=True)
class FmnistSpurious:
    """One member of the Fashion-MNIST spurious-shortcut family (a callable loader).

    Parameters
    ----------
    classes : (int, int)
        Fashion-MNIST class ids of label 0 and label 1 (default sneaker, ankle boot).
    shortcut : {"background", "stripes", "brightness"}
        The injected attribute: a red/blue background behind the item, a
        horizontal/vertical stripe texture over the item, or a dimmed / full-brightness
        item on a grey background.
    n_train, n_val, n_test : int
        Images per split (even numbers: classes are balanced). Train and validation
        come from the official training file, test from the official test file.
    train_agreement, val_agreement, test_agreement : float in [0, 1]
        Fraction of each class whose attribute agrees with the class (attribute 0 with
        label 0, attribute 1 with label 1) in each split.
    name : str
        Dataset name recorded in the result.

    Calling the instance (optionally with ``root``, the folder of the IDX files)
    returns the :class:`~gradtune.data.base.GroupedDataset`; ``repr`` lists every
    parameter, so it can go into cache keys.
    """

    classes: tuple[int, int] = SOURCE_CLASSES
    shortcut: str = "background"
    n_train: int = 3600
    n_val: int = 1200
    n_test: int = 1200
    train_agreement: float = 0.95
    val_agreement: float = 0.5
    test_agreement: float = 0.5
    name: str = "fmnist-spurious"

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {list(SHORTCUTS)}, got {self.shortcut!r}")
        cls = tuple(self.classes)
        if (len(cls) != 2 or cls[0] == cls[1]
                or not all(isinstance(c, (int, np.integer)) and 0 <= c < 10 for c in cls)):
            raise ValueError(f"classes must be two different Fashion-MNIST class ids in 0..9, "
                             f"got {self.classes!r}")
        object.__setattr__(self, "classes", (int(cls[0]), int(cls[1])))
        check_split_sizes(self)
        for key in ("train_agreement", "val_agreement", "test_agreement"):
            f = getattr(self, key)
            if not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {f!r}")

    def params(self) -> dict:
        """The parameters as a JSON-friendly dict."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        return out

    def __call__(self, root: str | os.PathLike[str] | None = None) -> GroupedDataset:
        tr_x, tr_y, te_x, te_y = read_fmnist(root)
        rng = np.random.default_rng(BUILD_SEED)
        tr_pick = _pick(tr_y, self.classes, (self.n_train // 2, self.n_val // 2), rng, "train")
        te_pick = _pick(te_y, self.classes, (self.n_test // 2,), rng, "t10k")
        images, labels, attrs, split, source = [], [], [], [], []
        plan = (("train", tr_x, 0, self.train_agreement), ("val", tr_x, 1, self.val_agreement),
                ("test", te_x, 0, self.test_agreement))
        for code_name, x, block, agreement in plan:
            picks = te_pick if code_name == "test" else tr_pick
            for label in (0, 1):
                idx = picks[label][block]
                images.append(x[idx])
                labels.append(np.full(idx.size, label, dtype=np.int64))
                attrs.append(_backgrounds(label, idx.size, agreement, rng))
                split.append(np.full(idx.size, SPLIT_CODES[code_name], dtype=np.int64))
                source.append(idx)
        y = np.concatenate(labels)
        a = np.concatenate(attrs)
        rgb, attr_names = compose_shortcut(np.concatenate(images), a, self.shortcut)
        class_names = [FMNIST_CLASS_NAMES[c] for c in self.classes]
        group_names = [f"{c},{b}" for c in class_names for b in attr_names]
        return GroupedDataset(self.name, rgb, y, a, 2 * y + a, np.concatenate(split),
                              class_names, attr_names, group_names,
                              {"source_index": np.concatenate(source)})


def load_fmnist_spurious(root: str | os.PathLike[str] | None = None, *, n_train: int = 3600,
                         n_val: int = 1200, n_test: int = 1200, train_agreement: float = 0.95,
                         eval_agreement: float = 0.5, val_agreement: float | None = None,
                         test_agreement: float | None = None,
                         classes: tuple[int, int] = SOURCE_CLASSES,
                         shortcut: str = "background") -> GroupedDataset:
    """Build a benchmark of the family with injected shortcuts (see :class:`FmnistSpurious`).

    Parameters
    ----------
    root : path, optional
        Folder with the four IDX files (default: see :func:`find_fmnist_dir`).
    n_train, n_val, n_test : int
        Images per split (even numbers: classes are balanced).
    train_agreement : float in [0, 1]
        Fraction of each training class whose attribute agrees with the class.
    eval_agreement : float in [0, 1]
        The same for validation and test, unless ``val_agreement`` / ``test_agreement``
        set them apart.
    classes, shortcut
        See :class:`FmnistSpurious`.

    Returns
    -------
    GroupedDataset
        ``inputs``: uint8 array (N, 28, 28, 3) RGB; ``labels`` (N,) 0 / 1 (the two
        classes); ``attributes`` (N,); ``groups`` (N,) ``2 * label + attribute``;
        ``split`` (N,) 0/1/2 (rows ordered train, validation, test);
        ``extra["source_index"]`` (N,) the row in the official file it came from.

    Raises
    ------
    DatasetNotFoundError
        If an IDX file is missing (the message says how to install them).
    ValueError
        If a parameter is out of range, a file is malformed or holds too few images.
    """
    spec = FmnistSpurious(
        classes=classes, shortcut=shortcut, n_train=n_train, n_val=n_val, n_test=n_test,
        train_agreement=train_agreement,
        val_agreement=eval_agreement if val_agreement is None else val_agreement,
        test_agreement=eval_agreement if test_agreement is None else test_agreement)
    return spec(root)

"""The inferred groups of :func:`gradtune.report.inspect.inspect_groups` as a gallery:
``inspect.html`` (self-contained), ``inspect.md`` (with ``gallery/*.png`` strips) and
``inspect.json``.

A row is shown as what it was before any encoder saw it:

* images as thumbnails: an (N, H, W) or (N, H, W, 3) uint8 array, or image file paths;
* texts as snippets;
* tabular rows as the columns that differ most from their class's mean (in class
  standard deviations), with the value and the mean.

Where the inputs come from (first that applies): the ``inputs`` argument (aligned with
the bundle's rows); a ``sources`` array in the bundle file (one string per row: an image
path, relative to the bundle's folder or absolute, or a text); the offline benchmark
named in the bundle's ``meta["dataset"]`` (its reader gives the rows in bundle order,
checked against the bundle's labels); else the bundle's own feature columns.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from gradtune._io import atomic_write, atomic_write_json
from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.report.document import Document, GalleryItem
from gradtune.report.inspect import GroupInspection

__all__ = ["RowInputs", "row_inputs", "bundle_sources", "resolve_inputs", "add_gallery", "write_gallery"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
THUMB_PX = 84
SNIPPET_CHARS = 220
TABULAR_COLUMNS = 4


@dataclass
class RowInputs:
    """The original rows of a bundle. kind : "image" | "image-file" | "text" | "tabular";
    data : the (N, ...) array or length-N sequence; columns : tabular column names;
    origin : where they came from (said in the report)."""

    kind: str
    data: Any
    origin: str
    columns: list[str] | None = None


def bundle_sources(path: str | Path) -> np.ndarray | None:
    """The optional ``sources`` (N,) string array of a bundle file (``.npz`` or a folder of
    ``.npy``), read with ``allow_pickle=False``; None when the file has none."""
    path = Path(path)
    try:
        if path.is_dir():
            f = path / "sources.npy"
            return np.load(f, allow_pickle=False) if f.is_file() else None
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["sources"]) if "sources" in z.files else None
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read the 'sources' array of {str(path)!r}: {err}") from None


def _classify(data: Any, origin: str, base: Path | None, columns: list[str] | None) -> RowInputs:
    if isinstance(data, np.ndarray) and data.dtype.kind in "uif" and data.ndim in (3, 4):
        return RowInputs("image", data, origin)
    if isinstance(data, np.ndarray) and data.dtype.kind in "uif" and data.ndim == 2:
        return RowInputs("tabular", data, origin, columns or [f"feature {j}" for j in range(data.shape[1])])
    seq = [str(s) for s in data]
    if seq and all(s.lower().endswith(IMAGE_SUFFIXES) for s in seq[:50]):
        paths = [Path(s) if Path(s).is_absolute() or base is None else base / s for s in seq]
        return RowInputs("image-file", paths, origin)
    return RowInputs("text", seq, origin)


def row_inputs(bundle: EmbeddingBundle, inputs: Any = None, *, bundle_path: str | Path | None = None,
               columns: Sequence[str] | None = None) -> RowInputs:
    """The original rows of ``bundle``, from the first source that has them (module docstring)."""
    n = len(bundle.labels)
    if inputs is not None:
        if len(inputs) != n:
            raise BundleError(f"inputs has {len(inputs)} rows but the bundle has {n}; pass one input per bundle row")
        return _classify(inputs, "the inputs given", None, list(columns) if columns else None)
    if bundle_path is not None:
        sources = bundle_sources(bundle_path)
        if sources is not None:
            if sources.shape != (n,):
                raise BundleError(f"the bundle's 'sources' array has shape {sources.shape}; it must be ({n},), "
                                  "one string per row")
            base = Path(bundle_path) if Path(bundle_path).is_dir() else Path(bundle_path).parent
            return _classify(sources, "the bundle's 'sources' array", base, None)
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS

    bench = OFFLINE_BENCHMARKS.get(str(bundle.meta.get("dataset", "")))
    if bench is not None:
        data = bench.load()
        if len(data.labels) == n and np.array_equal(data.labels, bundle.labels):
            return _classify(data.inputs if not isinstance(data.inputs, np.ndarray) else np.asarray(data.inputs),
                             f"the {bench.name} reader", None, data.extra.get("feature_names"))
    x = bundle.encoder_features if bundle.encoder_features is not None else bundle.features
    name = "encoder_features" if bundle.encoder_features is not None else "features"
    return RowInputs("tabular", x, f"the bundle's {name} (no original rows found)",
                     [f"{name}[{j}]" for j in range(x.shape[1])])


def _png(img: np.ndarray, px: int = THUMB_PX) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3) image, scaled up by an integer factor to about ``px``."""
    from gradtune.report.figures import _plt

    _plt()
    import matplotlib.image as mpimg

    a = np.asarray(img)
    if a.dtype.kind == "f" and a.max() <= 1.0:
        a = a * 255
    a = np.clip(a, 0, 255).astype(np.uint8)
    k = max(1, px // max(a.shape[:2]))
    a = np.repeat(np.repeat(a, k, axis=0), k, axis=1)
    buf = io.BytesIO()
    mpimg.imsave(buf, a, format="png", cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255)
    return buf.getvalue()


def _image(inputs: RowInputs, row: int) -> np.ndarray:
    if inputs.kind == "image":
        return np.asarray(inputs.data[row])
    import matplotlib.image as mpimg

    path = inputs.data[row]
    try:
        a = np.asarray(mpimg.imread(path))
    except OSError as err:
        raise BundleError(f"cannot read the image of row {row} ({path}): {err}") from None
    return a[..., :3] if a.ndim == 3 else a


def _tabular(inputs: RowInputs, rows: np.ndarray, ref: np.ndarray, row: int) -> str:
    """The row's columns farthest from the class mean (``ref``: the class's rows), in class stds."""
    x = np.asarray(inputs.data, dtype=np.float64)
    mean, std = x[ref].mean(0), x[ref].std(0)
    z = (x[row] - mean) / np.where(std > 0, std, 1.0)
    top = np.argsort(-np.abs(z), kind="stable")[:TABULAR_COLUMNS]
    cols = inputs.columns or []
    return "; ".join(f"{cols[j] if j < len(cols) else j} = {x[row, j]:.3g} (class mean {mean[j]:.3g})"
                     for j in top)


def _items(inputs: RowInputs, bundle: EmbeddingBundle, ins: GroupInspection, rows: np.ndarray,
           scores: dict[int, float], label: int) -> list[GalleryItem]:
    ref = ins.rows[bundle.labels[ins.rows] == label]
    out = []
    for r in rows.tolist():
        cap = f"row {r} · score {scores.get(r, float('nan')):.2f}"
        if inputs.kind in ("image", "image-file"):
            out.append(GalleryItem(cap, png=_png(_image(inputs, r))))
        elif inputs.kind == "text":
            t = " ".join(str(inputs.data[r]).split())
            out.append(GalleryItem(cap, text=t if len(t) <= SNIPPET_CHARS else t[:SNIPPET_CHARS - 1] + "…"))
        else:
            out.append(GalleryItem(cap, text=_tabular(inputs, rows, ref, r)))
    return out


def _strip(items: Sequence[GalleryItem]) -> bytes | None:
    """One PNG of the items' thumbnails side by side (for the Markdown), or None for text items."""
    import matplotlib.image as mpimg

    imgs = [mpimg.imread(io.BytesIO(i.png))[..., :3] for i in items if i.png is not None]
    if not imgs:
        return None
    h = max(a.shape[0] for a in imgs)
    gap = np.ones((h, 4, 3))
    tiles = []
    for a in imgs:
        pad = np.ones((h, a.shape[1], 3))
        pad[:a.shape[0]] = a
        tiles += [pad, gap]
    buf = io.BytesIO()
    mpimg.imsave(buf, np.concatenate(tiles[:-1], axis=1), format="png")
    return buf.getvalue()


def _writer(data: bytes) -> Callable[[BinaryIO], int]:
    return lambda fh: fh.write(data)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def resolve_inputs(ins: GroupInspection, inputs: RowInputs | None = None) -> RowInputs:
    """``inputs``, else the images kept from a model's loader, else :func:`row_inputs` of the bundle."""
    if ins.bundle is None:
        raise BundleError("this inspection has no bundle to show rows of; make it with inspect_groups")
    if inputs is None and ins.images is not None:
        inputs = RowInputs("image", ins.images, "the loader's image batches")
    return inputs or row_inputs(ins.bundle)


def add_gallery(doc: Document, ins: GroupInspection, inputs: RowInputs, out_dir: str | Path, *,
                level: int = 2, prefix: str = "") -> dict[str, Path]:
    """Append the inspection to ``doc``: the groups table, then per inferred minority its
    typical and confident rows; thumbnail strips for the Markdown go to
    ``out_dir/gallery/<prefix><group>-<kind>.png``. Returns the strips' paths."""
    bundle = ins.bundle
    if bundle is None:
        raise BundleError("this inspection has no bundle to show rows of; make it with inspect_groups")
    out_dir = Path(out_dir)
    doc.p(f"Groups inferred without labels by XRM twins ({ins.info.get('features')}, fitted on the "
          f"{ins.info.get('pool')} rows, seed {ins.info.get('seed')}) over the {ins.rows.size} validation rows "
          f"(held-out and selection halves). Each class splits into an inferred majority and an inferred minority "
          f"(rows the twins get wrong: what the class looks like when the shortcut points the other way). "
          f"ERM accuracy is the stored ERM head's, on all these rows: {_pct(ins.erm_accuracy)}%.")
    doc.p(f"Rows are shown from {inputs.origin}. Typical = closest to the inferred group's mean in the "
          "features the inference read; confident = highest minority score (share of twin mistakes).")
    diag = bundle.groups is not None
    table = pd.DataFrame([{"Inferred group": g.name, "Rows": g.size, "ERM accuracy (%)": _pct(g.erm_accuracy),
                           **({"Stored groups (diagnostic)": ", ".join(f"{k}: {v}" for k, v in g.true_groups.items())}
                              if diag else {})} for g in ins.groups])
    if level == 2:
        doc.h(2, "Inferred groups")
    doc.table(table)
    paths: dict[str, Path] = {}
    for g in ins.minorities:
        doc.h(level, f"{prefix}{g.name}: {g.size} rows, ERM accuracy {_pct(g.erm_accuracy)}%")
        if g.size == 0:
            doc.p("The inference put no row of this class in a minority.")
            continue
        for kind, rows in (("typical", g.typical), ("confident", g.confident)):
            items = _items(inputs, bundle, ins, rows, g.scores, g.label)
            strip = _strip(items)
            strip_path = None
            if strip is not None:
                strip_path = out_dir / "gallery" / f"{_slug(prefix + g.name)}-{kind}.png"
                paths[strip_path.stem] = atomic_write(strip_path, _writer(strip))
            doc.p(f"Most {kind} rows ({len(rows)}):")
            doc.gallery(items, strip=strip_path, thumb_px=THUMB_PX)
        if g.purity is not None:
            doc.p(f"Diagnostic (stored groups, never read to choose the rows): {100 * g.purity:.0f}% of the "
                  f"{g.shown.size} rows shown are in a true minority group "
                  f"({', '.join(ins.info.get('true_minority_groups') or [])}).")
    return paths


def write_gallery(ins: GroupInspection, out_dir: str | Path, *, inputs: RowInputs | None = None,
                  title: str | None = None) -> dict[str, Path]:
    """Write ``inspect.md``, ``inspect.html``, ``inspect.json`` and ``gallery/*.png`` into
    ``out_dir``; returns their paths. ``inputs``: see :func:`resolve_inputs`."""
    from gradtune.report.figures import require_figures

    require_figures()
    inputs = resolve_inputs(ins, inputs)
    dataset = (ins.bundle.meta if ins.bundle is not None else {}).get("dataset") or "bundle"
    doc = Document(title or f"What the model learned: inferred groups of {dataset}")
    paths = add_gallery(doc, ins, inputs, out_dir)
    paths.update(doc.write(out_dir, stem="inspect"))
    paths["json"] = atomic_write_json(Path(out_dir) / "inspect.json", {"dataset": dataset, "inputs": inputs.origin,
                                                                       **ins.to_dict()})
    return paths

"""The demo's report folder: results.csv, report.md, report.html and figures/, from stored records.

Run records and the ERM held-out gradient norms come from the demo's results store
(``<out>/runs/results.sqlite``); ``gradtune report`` can read the same store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gradtune._io import atomic_write_text
from gradtune.report.document import Document
from gradtune.report.figures import plot_group_accuracy, plot_norm_distributions, require_figures
from gradtune.report.gallery import add_gallery, resolve_inputs
from gradtune.report.inspect import GroupInspection
from gradtune.report.summary import (
    compact_table,
    comparison_notes,
    per_group_table,
    records_frame,
)

__all__ = ["write_report"]


def _norm_entries(run_root: Path, benchmark: str, fingerprints: set[str]) -> list[dict]:
    """The ERM held-out norms of the bundles behind ``fingerprints``, from the results store."""
    from gradtune.results.records import store_path_for
    from gradtune.results.store import ResultStore

    path = store_path_for(run_root)
    if not path.exists():
        return []
    entries = ResultStore(path, readonly=True).norms(benchmark=benchmark, fingerprints=fingerprints)
    return [e for e in entries if e.get("groups") is not None]


def _selection_notes(records: Sequence[dict], frame) -> list[str]:
    """Per benchmark: how much of GradTune's fine-tuning set the ERM head gets wrong, and what
    that does. Label-only statistics stored by the method (no group labels)."""
    out = []
    for b in dict.fromkeys(r["benchmark"] for r in records):
        d = [r["diagnostics"] for r in records if r["benchmark"] == b and r["label"] == "gradtune"
             and "selected_erm_error_rate" in r.get("diagnostics", {})]
        if not d:
            continue
        sel = 100 * float(np.mean([x["selected_erm_error_rate"] for x in d]))
        held = 100 * float(np.mean([x["heldout_erm_error_rate"] for x in d]))
        f = frame[frame["benchmark"] == b]
        dw = 100 * (f[f["method"] == "gradtune"]["worst_group_accuracy"].mean()
                    - f[f["method"] == "erm"]["worst_group_accuracy"].mean())
        text = (f"{b}: the ERM head misclassifies {sel:.0f}% of GradTune's fine-tuning set "
                f"(vs {held:.0f}% of the whole held-out half).")
        if dw < -1 and sel > 50:
            text += (" Most of the set is the head's own errors, so 500 epochs on it teach the head the "
                     "opposite of what it knew: when those errors are label noise rather than a shortcut, the "
                     "head inverts (the paper's defaults have no stopping rule; see gradtune-auto).")
        elif dw < -1:
            whole = all(x.get("size") == x.get("heldout_size") for x in d)
            text += ((" The fine-tuning set is the whole held-out half (M' >= N), so the selection has no "
                      "effect here;" if whole else "") +
                     " 500 epochs on this set lower worst-group accuracy below ERM's: where the held-out set "
                     "carries the training bias, the top-norm set is only partly minority (the paper's defaults "
                     "have no stopping rule; gradtune-auto chooses its repair by a label-free rule).")
        out.append(text)
    return out


def _inference_notes(records: Sequence[dict]) -> list[str]:
    """Per benchmark and method: purity / recall of the inferred minority (diagnostic only:
    computed with the true groups after the fit, never read by the method)."""
    out = []
    for b in dict.fromkeys(r["benchmark"] for r in records):
        for m in dict.fromkeys(r["label"] for r in records if r["benchmark"] == b):
            qs = [r["diagnostics"]["inference_quality"] for r in records
                  if r["benchmark"] == b and r["label"] == m
                  and (r.get("diagnostics") or {}).get("inference_quality")]
            qs = [q for q in qs if q.get("purity") is not None and q.get("recall") is not None]
            if not qs:
                continue
            pur = 100 * float(np.mean([q["purity"] for q in qs]))
            rec = 100 * float(np.mean([q["recall"] for q in qs]))
            n = float(np.mean([q["n_inferred"] for q in qs]))
            out.append(f"{b}, {m}: inferred minority of the validation rows has purity {pur:.0f}% and "
                       f"recall {rec:.0f}% ({n:.0f} rows on average, {len(qs)} seeds).")
    return out


def write_report(records: Sequence[dict], run_root: str | Path, out_dir: str | Path, *,
                 methods: Sequence[str], benchmarks: Sequence[str], title: str = "gradtune demo",
                 preamble: Sequence[str] = (), inspections: dict[str, GroupInspection] | None = None,
                 ) -> dict[str, Path]:
    """Write the report files; returns their paths. ``preamble`` lines open the Markdown;
    ``inspections`` (benchmark -> :func:`~gradtune.report.inspect.inspect_groups` of one of
    its bundles) add a gallery of what the ERM model learned on each."""
    require_figures()  # before anything is written: a missing matplotlib leaves no partial report
    run_root, out_dir = Path(run_root), Path(out_dir)
    fig_dir = out_dir / "figures"
    frame = records_frame(records, "test")
    frame_sorted = frame.sort_values(["benchmark", "method", "seed"]) if not frame.empty else frame
    table, header = compact_table(frame, methods, benchmarks, avg_std=True)
    notes = comparison_notes(frame)
    if "gradtune-auto" in set(frame.get("method", [])):
        notes += comparison_notes(frame, "gradtune-auto", "erm")
    why = _selection_notes(records, frame)
    inferred = _inference_notes(records)
    figures: list[tuple[str, Path]] = []
    group_tables = {}
    for b in benchmarks:
        recs = [r for r in records if r["benchmark"] == b]
        if not recs:
            continue
        names = recs[0].get("group_names")
        norms = _norm_entries(run_root, b, {r["bundle_fingerprint"] for r in recs})
        if norms:
            figures.append((f"{b}: held-out gradient norms per group (ERM head, {len(norms)} seeds pooled)",
                            plot_norm_distributions(norms, names, b, fig_dir / f"{b}-gradnorms.png")))
        shown = [m for m in ("erm", "gradtune", "gradtune-auto") if any(r["label"] == m for r in recs)]
        acc: dict[str, list] = defaultdict(list)
        for r in sorted(recs, key=lambda r: r["seed"]):
            if r["label"] in shown and "test" in r["evaluation"]:
                acc[r["label"]].append(r["evaluation"]["test"]["group_accuracy"])
        if acc and names:
            figures.append((f"{b}: per-group test accuracy before (ERM) and after GradTune (and gradtune-auto)",
                            plot_group_accuracy(dict(acc), names, b, fig_dir / f"{b}-group-accuracy.png")))
        group_tables[b] = per_group_table(records, b, [m for m in methods if any(r["label"] == m for r in recs)])

    doc = Document(title)
    for line in preamble:
        doc.p(line)
    doc.h(2, "Test accuracy (%)")
    doc.p(header.split(", ", 1)[-1].replace("\n", ". ") + ". The group-label column says which group labels a method reads "
          "(DFR: those of the validation rows); the others read none. Every run: results.csv.")
    doc.table(table)
    doc.h(2, "What the numbers say")
    doc.ul(notes or ["(no GradTune/ERM pair to compare)"])
    if why:
        doc.h(2, "What GradTune selected")
        doc.ul(why)
    if inferred:
        doc.h(2, "Inferred groups (label-free methods)")
        doc.p("Purity = share of the rows a method's group inference calls minority that are truly in a "
              "minority group (a group smaller than its class's average in the training rows); recall = "
              "share of the true minority it finds. Computed after the fit with the true groups, as a "
              "diagnostic; no method reads them.")
        doc.ul(inferred)
    for b, t in group_tables.items():
        doc.h(2, f"{b}: per-group test accuracy (%)")
        doc.table(t)
    gallery_paths: dict[str, Path] = {}
    for b, ins in (inspections or {}).items():
        doc.h(2, f"{b}: what the ERM model learned (inferred groups, seed {ins.info.get('seed')})")
        gallery_paths.update(add_gallery(doc, ins, resolve_inputs(ins), out_dir, level=3, prefix=f"{b} "))
    if figures:
        doc.h(2, "Figures")
        for caption, p in figures:
            doc.fig(p, caption)
    csv_path = atomic_write_text(out_dir / "results.csv", frame_sorted.to_csv(index=False))
    written = doc.write(out_dir)
    md_path, html_path = written["markdown"], written["html"]
    return {"csv": csv_path, "markdown": md_path, "html": html_path,
            **{p.stem: p for _, p in figures}}

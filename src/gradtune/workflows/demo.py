"""The offline demo: ERM vs random fine-tuning vs loss-top-k vs GradTune vs DFR on
three real-data benchmarks, three seeds, with a report folder.

Bundles (encoder features + seeded ERM model) are cached on disk, and every
(benchmark, seed, method) result is a stored record, so a second run only reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.experiments.bundles import cached_bundle
from gradtune.experiments.runner import RunSpec, run_grid
from gradtune.methods.base import list_methods
from gradtune.report.demo_report import write_report
from gradtune.report.figures import require_figures
from gradtune.report.summary import compact_table, records_frame, summary_table

__all__ = ["DemoConfig", "DEFAULT_METHODS", "run_demo"]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("erm", "random", "loss-topk", "gradtune", "dfr-xrm", "gradtune-auto", "dfr")
DEFAULT_BENCHMARKS = ("fmnist-spurious", "fmnist-biased", "reviews", "adult")


@dataclass
class DemoConfig:
    """What the demo runs and where it writes.

    benchmarks : names from gradtune.experiments.offline.OFFLINE_BENCHMARKS
    seeds : each seed picks the held-out/selection halves, the ERM model, and the methods' draws
    methods : registry names ('all' expands to every registered method)
    out : report folder (records under out/runs)
    cache_dir : encoder-feature and bundle cache (default: ~/.cache/gradtune or $GRADTUNE_CACHE_DIR)
    inspect : add a gallery of each benchmark's inferred groups (first seed) to the report
    """

    benchmarks: Sequence[str] = DEFAULT_BENCHMARKS
    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = DEFAULT_METHODS
    out: Path = Path("gradtune-demo-report")
    cache_dir: Path | None = None
    force: bool = False
    progress: bool = True
    inspect: bool = True
    method_params: dict[str, dict] = field(default_factory=dict)


def family_params(method: str, benchmark: str) -> dict[str, object]:
    """The defaults of ``method`` for the data family of offline ``benchmark``
    (:meth:`Method.family_defaults`: the paper's text optimizer on text benchmarks)."""
    from gradtune.experiments.offline import OFFLINE_BENCHMARKS
    from gradtune.methods.tuning import family_defaults

    bench = OFFLINE_BENCHMARKS.get(benchmark)
    return family_defaults(method, None if bench is None else bench.family)


def _specs(cfg: DemoConfig) -> list[RunSpec]:
    methods = list_methods() if list(cfg.methods) == ["all"] else list(cfg.methods)
    specs = []
    for b in cfg.benchmarks:
        for s in cfg.seeds:
            for m in methods:
                params = {**family_params(m, b), **cfg.method_params.get(m, {})}
                specs.append(RunSpec(b, s, m, tuple(sorted(params.items()))))
    return specs


def run_demo(cfg: DemoConfig, build: Callable[..., EmbeddingBundle] | None = None) -> dict:
    """Run the grid (resuming), write the report; returns {'table': the report's DataFrame,
    'compact' and 'compact_header': the terminal's table, 'paths', 'seconds', 'counts', 'records'}."""
    require_figures()  # the report's figures need matplotlib: say so before any run is computed
    if build is None:
        from gradtune.experiments.offline import build_bundle

        build = build_bundle
    make: Callable[..., EmbeddingBundle] = build
    t0 = time.perf_counter()
    out = Path(cfg.out)
    run_root = out / "runs"
    specs = _specs(cfg)
    methods = list(dict.fromkeys(s.display for s in specs))

    def get_bundle(name: str, seed: int) -> EmbeddingBundle:
        return cached_bundle(name, seed, cfg.cache_dir, make, force=cfg.force, progress=cfg.progress)

    counts = {"new": 0, "reused": 0}

    def on_record(rec: dict, reused: bool) -> None:
        counts["reused" if reused else "new"] += 1
        if cfg.progress:
            ev = rec["evaluation"].get("test", {})
            wga = ev.get("worst_group_accuracy")
            state = "cached" if reused else f"{rec['fit_seconds']:.1f}s"
            logger.info("  %16s seed %s %10s: avg %5.1f  wga %5.1f  (%s)", rec["benchmark"], rec["seed"],
                        rec["label"], 100 * ev.get("accuracy", float("nan")),
                        100 * wga if wga is not None else float("nan"), state)

    records = list(run_grid(specs, get_bundle, run_root, force=cfg.force, on_record=on_record))
    inspections = {}
    if cfg.inspect and cfg.seeds:
        from gradtune.report.inspect import inspect_groups

        for b in cfg.benchmarks:  # what the first seed's ERM model learned, shown as rows
            inspections[b] = inspect_groups(get_bundle(b, cfg.seeds[0]), seed=cfg.seeds[0], n_rows=6)
    preamble = [
        f"Benchmarks: {', '.join(cfg.benchmarks)}; seeds: {', '.join(map(str, cfg.seeds))}; "
        f"methods: {', '.join(methods)}.",
        "Protocol: a frozen pretrained encoder (none for Adult) feeds a small MLP trained by class-balanced ERM "
        "on the train split. The validation split is halved by the seed: the held-out half is what every "
        "last-layer method trains on; the selection half is used to choose settings (by DFR with group "
        "labels, by gradtune-auto and dfr-xrm without). Test data is never used for any choice.",
        "GradTune runs with the paper's defaults (M'=500, k=400, 500 epochs, SGD lr 3e-3 cosine, batch 32, "
        "wd 1e-4, class-balanced sampler, fine-tuning from the ERM head). When the held-out half is smaller "
        "than 500, the whole held-out half is used with k = 80% of it (the paper's ratio). Random fine-tuning "
        "and loss-top-k use the same set size and fine-tuning.",
        "gradtune-auto (beyond the paper, the recommended label-free pipeline; see label-free.md in gradtune's "
        "docs: docs/ in the source, share/doc/gradtune/ in an installed environment) infers "
        "pseudo-groups with XRM twins on the frozen encoder's features of the training rows, builds "
        "candidate heads by group-balanced retraining on one validation half, and scores them on audit "
        "cells of the other half (where the ERM head errs, learned on the first half). It keeps the ERM "
        "head when its mistakes differ from its correct rows only along its own decision directions "
        "(class overlap or label noise), and otherwise unless a candidate wins on the audit cells by more "
        "than the noise, keeps most of its class-balanced accuracy and gets at least 40% of every audit "
        "cell right. dfr-xrm is DFR run on the same kind of pseudo-groups, without that guard. Neither "
        "reads a group label.",
        "DFR uses group labels on the validation data (marked in the table); all other methods use none.",
    ]
    if any(b.startswith("fmnist") for b in cfg.benchmarks):  # say only what applies to the benchmarks run
        preamble.append(
            "fmnist-spurious: the background colour is injected by gradtune (95% agreement with the class in "
            "train, 50% in validation/test); it is a constructed shortcut on real images. fmnist-biased: the "
            "same shortcut with the validation split at the training correlation (95%, 8,000 images), as "
            "CelebA's, MultiNLI's and CivilComments' validation sets are; its test split is balanced.")
    if "reviews" in cfg.benchmarks:
        preamble.append(
            "reviews runs the paper's text optimizer for fine-tuning (AdamW lr 1e-5, linear schedule, batch 16); "
            "its held-out half has 1,000 reviews, so M' = 500 selects half of them.")
    paths = write_report(records, run_root, out, methods=methods, benchmarks=list(cfg.benchmarks),
                         title="gradtune offline demo: GradTune vs baselines on real data", preamble=preamble,
                         inspections=inspections)
    frame = records_frame(records)
    table = summary_table(frame, methods, list(cfg.benchmarks))
    compact, header = compact_table(frame, methods, list(cfg.benchmarks))
    return {"table": table, "compact": compact, "compact_header": header, "records": records, "paths": paths, "seconds": time.perf_counter() - t0,
            "counts": counts}

"""``gradtune inspect``: what the model learned, shown as the rows of its label-free groups.

Example::

    gradtune inspect fmnist-biased --out inspect-fmnist
    gradtune inspect bundle.npz --out inspect-bundle

Infers groups of a bundle's validation rows without labels (XRM twins, as gradtune-auto
and dfr-xrm do) and writes inspect.html (a gallery), inspect.md (with gallery/*.png) and
inspect.json: each inferred group's size and ERM accuracy, and the most typical and
most confident rows of each inferred minority, as thumbnails (images), snippets (texts)
or the columns that differ most from the class mean (tabular rows).

BUNDLE is a bundle file (.npz or folder), ``example`` (the packaged synthetic bundle),
or the name of an offline benchmark (its bundle for --seed is built, or read from the
cache). A bundle file may carry a ``sources`` array (one string per row: an image path
relative to the bundle, or a text) so that the gallery shows the original rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradtune._cli_flags import add_json, add_quiet, run_json_aware
from gradtune._names import OFFLINE_BENCHMARK_NAMES, name_list

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spurious_example.npz"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show the rows of the groups the model's shortcut creates (a gallery)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE",
                   help="a bundle file or folder, 'example' (the packaged synthetic bundle), or an offline "
                   f"benchmark: {name_list(OFFLINE_BENCHMARK_NAMES)}")
    p.add_argument("--out", type=Path, required=True, help="folder for inspect.html, inspect.md, inspect.json")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the inference (and an offline benchmark's bundle) (default 0)")
    p.add_argument("--rows", type=int, default=8,
                   help="typical rows and confident rows shown per inferred minority (default 8)")
    p.add_argument("--features", choices=("auto", "encoder", "features"), default="auto",
                   help="features the inference reads (default auto: the frozen encoder's when the bundle has them)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="bundle cache of the offline benchmarks (default ~/.cache/gradtune or $GRADTUNE_CACHE_DIR)")
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_json_aware(args, lambda: _run(args))


def _load(args: argparse.Namespace):  # noqa: ANN202 - EmbeddingBundle, imported lazily
    from gradtune._validation import GradTuneInputError
    from gradtune.embeddings.bundle import load_bundle

    path = EXAMPLE if args.bundle == "example" else Path(args.bundle)
    if path.exists():
        return load_bundle(path), path
    if args.bundle in OFFLINE_BENCHMARK_NAMES:
        from gradtune.experiments.bundles import cached_bundle
        from gradtune.experiments.offline import build_bundle

        return cached_bundle(args.bundle, args.seed, args.cache_dir, build_bundle, progress=False), None
    raise GradTuneInputError(f"BUNDLE {args.bundle!r} is neither an existing bundle file or folder nor an offline "
                             f"benchmark ({', '.join(OFFLINE_BENCHMARK_NAMES)})")


def _run(args: argparse.Namespace) -> tuple[int, dict]:
    from gradtune._validation import check_positive_int
    from gradtune.report.figures import require_figures

    check_positive_int(args.seed, "--seed", allow_zero=True)  # flags first, then extras, then work
    check_positive_int(args.rows, "--rows")
    require_figures()  # the gallery's thumbnails are drawn with matplotlib
    from gradtune._errors import ensure_output_dir
    from gradtune.report.gallery import row_inputs, write_gallery
    from gradtune.report.inspect import inspect_groups

    bundle, path = _load(args)
    inputs = row_inputs(bundle, bundle_path=path)  # a bad 'sources' array fails before the inference
    ensure_output_dir(args.out)  # and so does an unwritable --out
    ins = inspect_groups(bundle, seed=args.seed, n_rows=args.rows, features=args.features)
    paths = write_gallery(ins, args.out, inputs=inputs)
    for g in ins.groups:
        acc = "-" if g.erm_accuracy is None else f"{100 * g.erm_accuracy:.1f}%"
        purity = "" if g.purity is None else f"; diagnostic: {100 * g.purity:.0f}% of shown rows in a true minority"
        print(f"{g.name:40s} {g.size:6d} rows  ERM accuracy {acc}{purity}")
    print(f"gallery: {paths['html']}  {paths['markdown']}")
    return 0, {**ins.to_dict(), "paths": {k: str(v) for k, v in paths.items()}}

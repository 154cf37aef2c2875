"""The stress suite's members and the rule that splits them into a development half and a
report half (see :mod:`gradtune.experiments.stress` for how each member becomes a bundle).

**The split rule, fixed before any tuning:** within each family, members alternate
development / report in the order they are listed (first dev, second report, third dev,
...). Every family has at least two members, so every kind of problem appears on both
sides. Later batches are appended family pair by family pair, so each adds to both halves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gradtune.data.offline.fmnist import FmnistSpurious, fmnist_files
from gradtune.data.offline.fmnist_marked import FmnistMarked
from gradtune.data.offline.reviews import ReviewsSpec
from gradtune.data.synthetic import ShortcutSpec
from gradtune.experiments.offline import (
    _FMNIST_ENCODER,
    _FMNIST_MLP,
    OFFLINE_BENCHMARKS,
    OfflineBenchmark,
)

__all__ = ["StressMember", "STRESS_SUITE", "suite_members", "ROLES"]

ROLES = ("dev", "report")


@dataclass(frozen=True)
class StressMember:
    """One problem of the suite.

    name : str; family : str; role : "dev" or "report" (from the split rule);
    spec : ShortcutSpec (synthetic) or OfflineBenchmark (offline); erm : "linear" or "mlp"
    (synthetic only); control : True where there is no shortcut (the method must keep ERM);
    batch : 1 for the first members, 2 to 13 for later batches (each added, with its roles,
    before any default was tuned on it; the earlier batches' report halves had been read).
    """

    name: str
    family: str
    spec: ShortcutSpec | OfflineBenchmark
    role: str = ""
    erm: str = "linear"
    control: bool = False
    batch: int = 1

    @property
    def kind(self) -> str:
        return "synthetic" if isinstance(self.spec, ShortcutSpec) else "offline"

    @property
    def data_family(self) -> str:
        """``"vision"``, ``"text"`` or ``"tabular"`` (picks fine-tuning defaults)."""
        return "tabular" if isinstance(self.spec, ShortcutSpec) else self.spec.family


def _syn(family: str, name: str, erm: str = "linear", control: bool = False, **kw: Any) -> StressMember:
    return StressMember(name, family, ShortcutSpec(name=name, **kw), erm=erm, control=control)


def _fm(family: str, name: str, marked: bool = False, control: bool = False, **kw: Any) -> StressMember:
    load = FmnistMarked(name=name, **kw) if marked else FmnistSpurious(name=name, **kw)
    bench = OfflineBenchmark(name=name, description=f"Fashion-MNIST stress member {load!r}", load=load,
                             files=fmnist_files, encoder="efficientnet-lite0",
                             encoder_params=dict(_FMNIST_ENCODER), mlp=_FMNIST_MLP)
    return StressMember(name, family, bench, control=control)


def _reviews(family: str, name: str, attribute: str) -> StressMember:
    base = OFFLINE_BENCHMARKS["reviews"]
    bench = replace(base, name=name, load=ReviewsSpec(n_val=2000, attribute=attribute),
                    description=f"Amazon fine-food reviews grouped by the {attribute!r} attribute")
    return StressMember(name, family, bench)


# Listed family by family; the role follows from the position inside the family.
_MEMBERS: tuple[StressMember, ...] = (
    # a weak core signal and a strong shortcut, in several dimensions
    _syn("weak-core", "lin-weak-core-64", dim=64, core_strength=1.0, shortcut_strength=3.0),
    _syn("weak-core", "lin-weak-core-512", dim=512, core_strength=1.0, shortcut_strength=3.0),
    _syn("weak-core", "lin-weak-core-128", dim=128, core_strength=1.2, shortcut_strength=2.5),
    # a clear core signal, a shortcut of varying strength
    _syn("strong-core", "lin-strong-core-s2", dim=64, core_strength=2.5, shortcut_strength=2.0),
    _syn("strong-core", "lin-strong-core-s4", dim=64, core_strength=2.5, shortcut_strength=4.0),
    # minority fraction from 0.5% to 20%
    _syn("minority", "lin-minority-2pct", dim=64, core_strength=1.5, train_agreement=0.98),
    _syn("minority", "lin-minority-10pct", dim=64, core_strength=1.5, train_agreement=0.90),
    _syn("minority", "lin-minority-0.5pct", dim=64, core_strength=1.5, train_agreement=0.995,
         n_train=8000, n_val=4000),
    _syn("minority", "lin-minority-20pct", dim=64, core_strength=1.5, train_agreement=0.80),
    # held-out bias: group-balanced validation vs less biased than training
    _syn("heldout-bias", "lin-val-balanced", dim=64, core_strength=1.5, val_balanced=True),
    _syn("heldout-bias", "lin-val-half-bias", dim=64, core_strength=1.5, val_agreement=0.75),
    # C classes with a class-tied shortcut
    _syn("multiclass", "lin-3class", n_classes=3, dim=64, core_strength=1.5),
    _syn("multiclass", "lin-5class", n_classes=5, dim=64, core_strength=1.8),
    _syn("multiclass", "lin-10class", n_classes=10, dim=128, core_strength=3.0, n_train=8000,
         n_val=4000, n_test=6000),
    _syn("multiclass", "lin-4class", n_classes=4, dim=64, core_strength=1.5),
    # a mark tied mostly to one class (MultiNLI-like)
    _syn("tied-one", "lin-mark-3class", n_classes=3, tie="one", tied_class=2, dim=64, core_strength=1.5,
         train_agreement=0.9),
    _syn("tied-one", "lin-mark-2class", n_classes=2, tie="one", tied_class=0, dim=64, core_strength=1.5,
         train_agreement=0.9),
    _syn("tied-one", "lin-mark-4class", n_classes=4, tie="one", tied_class=1, dim=64, core_strength=1.8,
         train_agreement=0.85),
    # label noise on training and validation labels
    _syn("noise", "lin-noise-10", dim=64, core_strength=1.5, label_noise=0.10),
    _syn("noise", "lin-noise-20", dim=64, core_strength=1.5, label_noise=0.20),
    # two shortcut attributes at once
    _syn("multi-attribute", "lin-two-attrs", n_attributes=2, dim=64, core_strength=1.5,
         shortcut_strength=2.0),
    _syn("multi-attribute", "lin-two-attrs-3class", n_attributes=2, n_classes=3, dim=96, core_strength=1.8,
         shortcut_strength=2.0),
    # an ERM MLP instead of a linear ERM (the head's features are not the rows)
    _syn("mlp-erm", "mlp-weak-core", erm="mlp", dim=64, core_strength=1.0, shortcut_strength=3.0),
    _syn("mlp-erm", "mlp-3class", erm="mlp", n_classes=3, dim=64, core_strength=1.5),
    # nothing to repair: the method must keep the ERM head
    _syn("control", "control-2class", control=True, dim=64, core_strength=1.5, shortcut_strength=0.0),
    _syn("control", "control-3class", control=True, n_classes=3, dim=64, core_strength=1.5,
         shortcut_strength=0.0),
    _syn("control", "control-noisy", control=True, dim=64, core_strength=1.0, shortcut_strength=0.0,
         label_noise=0.15),
    _syn("control", "control-weak", control=True, dim=128, core_strength=0.8, shortcut_strength=0.0),
    # images: other class pairs, shortcut kinds and weaker biases than the packaged benchmarks
    _fm("fmnist", "fm-sandal-sneaker-bg85", classes=(5, 7), train_agreement=0.85, val_agreement=0.85,
        n_val=4000),
    _fm("fmnist", "fm-pullover-coat-stripes90", classes=(2, 4), shortcut="stripes", train_agreement=0.9,
        val_agreement=0.9, n_val=4000),
    _fm("fmnist", "fm-tshirt-dress-bg90", classes=(0, 3), train_agreement=0.9, val_agreement=0.9,
        n_val=4000),
    _fm("fmnist", "fm-trouser-bag-stripes80", classes=(1, 8), shortcut="stripes", train_agreement=0.8,
        val_agreement=0.8, n_val=4000),
    # images, three or four classes, a mark tied mostly to one class
    _fm("fmnist-multiclass", "fm-3class-bg-tied90", marked=True, classes=(0, 2, 4), tied_class=2,
        agreement=0.9),
    _fm("fmnist-multiclass", "fm-3class-stripes-tied85", marked=True, classes=(5, 7, 9), tied_class=0,
        shortcut="stripes", agreement=0.85),
    _fm("fmnist-multiclass", "fm-4class-bg-tied85", marked=True, classes=(1, 3, 6, 8), tied_class=1,
        agreement=0.85),
    # the project's tabular and text benchmarks
    StressMember("adult", "tabular-text", OFFLINE_BENCHMARKS["adult"]),
    StressMember("reviews", "tabular-text", OFFLINE_BENCHMARKS["reviews"]),
    # Second batch, declared together before any default was tuned on it: one more pair
    # per family, so each family gains one development and one report member (the roles
    # keep alternating from where the family's list stopped).
    _syn("weak-core", "lin-weak-core-256", dim=256, core_strength=1.1, shortcut_strength=3.5),
    _syn("weak-core", "lin-weak-core-32", dim=32, core_strength=0.9, shortcut_strength=2.5),
    _syn("strong-core", "lin-strong-core-s3", dim=96, core_strength=2.2, shortcut_strength=3.0),
    _syn("strong-core", "lin-strong-core-s5", dim=128, core_strength=3.0, shortcut_strength=5.0),
    _syn("minority", "lin-minority-5pct", dim=64, core_strength=1.5, train_agreement=0.95, n_train=6000),
    _syn("minority", "lin-minority-1pct", dim=64, core_strength=1.5, train_agreement=0.99, n_train=8000,
         n_val=4000),
    _syn("heldout-bias", "lin-val-mild-bias", dim=64, core_strength=1.5, val_agreement=0.85),
    _syn("heldout-bias", "lin-val-balanced-weak", dim=128, core_strength=1.2, val_balanced=True),
    _syn("multiclass", "lin-6class", n_classes=6, dim=96, core_strength=2.0, n_train=6000, n_val=3000),
    _syn("multiclass", "lin-3class-strong", n_classes=3, dim=64, core_strength=2.5, shortcut_strength=3.5),
    _syn("tied-one", "lin-mark-3class-d256", n_classes=3, tie="one", tied_class=0, dim=256, core_strength=1.6,
         train_agreement=0.9),
    _syn("tied-one", "lin-mark-5class", n_classes=5, tie="one", tied_class=3, dim=64, core_strength=2.0,
         train_agreement=0.9),
    _syn("noise", "lin-noise-5", dim=64, core_strength=1.5, label_noise=0.05),
    _syn("noise", "lin-noise-15-3class", n_classes=3, dim=64, core_strength=2.0, label_noise=0.15),
    _syn("multi-attribute", "lin-three-attrs", n_attributes=3, dim=64, core_strength=1.6, shortcut_strength=2.0),
    _syn("multi-attribute", "lin-two-attrs-weak", n_attributes=2, dim=64, core_strength=1.2,
         shortcut_strength=2.5),
    _syn("mlp-erm", "mlp-mark-3class", erm="mlp", n_classes=3, tie="one", tied_class=1, dim=64,
         core_strength=1.6, train_agreement=0.9),
    _syn("mlp-erm", "mlp-strong-core", erm="mlp", dim=64, core_strength=2.5, shortcut_strength=3.0),
    _syn("control", "control-4class", control=True, n_classes=4, dim=64, core_strength=1.8,
         shortcut_strength=0.0),
    _syn("control", "control-512", control=True, dim=512, core_strength=1.2, shortcut_strength=0.0),
    _fm("fmnist", "fm-shirt-coat-bright90", classes=(6, 4), shortcut="brightness", train_agreement=0.9,
        val_agreement=0.9, n_val=4000),
    _fm("fmnist", "fm-sandal-boot-bright90", classes=(5, 9), shortcut="brightness", train_agreement=0.9,
        val_agreement=0.9, n_val=4000),
    _fm("fmnist-multiclass", "fm-3class-bright-tied90", marked=True, classes=(1, 5, 8), tied_class=1,
        shortcut="brightness", agreement=0.9),
    _fm("fmnist-multiclass", "fm-3class-bg-tied80", marked=True, classes=(3, 6, 7), tied_class=2,
        agreement=0.8),
    _reviews("tabular-text", "reviews-exclamation", "exclamation"),
    _reviews("tabular-text", "reviews-long", "long"),
    # Third batch, declared together before any run on it (after the second batch's report
    # half had been read): one more pair in five families.
    _reviews("tabular-text", "reviews-question", "question"),
    _reviews("tabular-text", "reviews-digits", "digits"),
    _syn("weak-core", "lin-weak-core-1024", dim=1024, core_strength=1.2, shortcut_strength=3.0, n_train=8000,
         n_val=4000),
    _syn("weak-core", "lin-weak-core-48", dim=48, core_strength=1.0, shortcut_strength=2.0),
    _syn("tied-one", "lin-mark-3class-weak", n_classes=3, tie="one", tied_class=1, dim=64, core_strength=1.2,
         train_agreement=0.85),
    _syn("tied-one", "lin-mark-3class-s2", n_classes=3, tie="one", tied_class=2, dim=128, core_strength=1.8,
         shortcut_strength=2.0, train_agreement=0.9),
    _syn("control", "control-3class-256", control=True, n_classes=3, dim=256, core_strength=1.8,
         shortcut_strength=0.0),
    _syn("control", "control-noisy-256", control=True, dim=256, core_strength=1.4, shortcut_strength=0.0,
         label_noise=0.1),
    _syn("noise", "lin-noise-10-256", dim=256, core_strength=1.5, label_noise=0.10),
    _syn("noise", "lin-noise-10-3class", n_classes=3, dim=64, core_strength=2.0, label_noise=0.10),
    # Fourth batch, declared together before any run on it (after the third batch's report
    # half had been read): one more pair in every family, two in the controls.
    _syn("weak-core", "lin-weak-core-384", dim=384, core_strength=1.1, shortcut_strength=3.0, n_train=6000,
         n_val=3000),
    _syn("weak-core", "lin-weak-core-96", dim=96, core_strength=0.9, shortcut_strength=2.0, n_train=6000),
    _syn("strong-core", "lin-strong-core-256", dim=256, core_strength=2.0, shortcut_strength=2.5),
    _syn("strong-core", "lin-strong-core-s6", dim=64, core_strength=3.0, shortcut_strength=6.0),
    _syn("minority", "lin-minority-3pct", dim=96, core_strength=1.4, train_agreement=0.97, n_train=6000),
    _syn("minority", "lin-minority-15pct", dim=128, core_strength=1.3, train_agreement=0.85),
    _syn("heldout-bias", "lin-val-more-biased", dim=64, core_strength=1.4, train_agreement=0.93,
         val_agreement=0.98, n_val=3000),
    _syn("heldout-bias", "lin-val-balanced-3class", n_classes=3, dim=64, core_strength=1.6, val_balanced=True),
    _syn("multiclass", "lin-4class-weak", n_classes=4, dim=96, core_strength=1.3),
    _syn("multiclass", "lin-8class", n_classes=8, dim=128, core_strength=2.6, n_train=8000, n_val=4000,
         n_test=6000),
    _syn("tied-one", "lin-mark-4class-d128", n_classes=4, tie="one", tied_class=0, dim=128, core_strength=1.6,
         train_agreement=0.9),
    _syn("tied-one", "lin-mark-3class-s3", n_classes=3, tie="one", tied_class=1, dim=64, core_strength=1.4,
         shortcut_strength=3.0, train_agreement=0.92),
    _syn("noise", "lin-noise-20-3class", n_classes=3, dim=64, core_strength=2.2, label_noise=0.20),
    _syn("noise", "lin-noise-5-512", dim=512, core_strength=1.4, label_noise=0.05, n_train=6000),
    _syn("multi-attribute", "lin-two-attrs-128", n_attributes=2, dim=128, core_strength=1.5, shortcut_strength=2.2),
    _syn("multi-attribute", "lin-three-attrs-weak", n_attributes=3, dim=64, core_strength=1.3,
         shortcut_strength=1.8),
    _syn("mlp-erm", "mlp-4class", erm="mlp", n_classes=4, dim=64, core_strength=1.8),
    _syn("mlp-erm", "mlp-noise", erm="mlp", dim=64, core_strength=1.5, label_noise=0.10),
    _syn("control", "control-5class", control=True, n_classes=5, dim=64, core_strength=2.0,
         shortcut_strength=0.0),
    _syn("control", "control-768", control=True, dim=768, core_strength=1.3, shortcut_strength=0.0,
         n_train=6000),
    _syn("control", "control-mlp", control=True, erm="mlp", dim=64, core_strength=1.2, shortcut_strength=0.0),
    _syn("control", "control-noisy-3class", control=True, n_classes=3, dim=64, core_strength=1.8,
         shortcut_strength=0.0, label_noise=0.15),
    _fm("fmnist", "fm-bag-boot-stripes85", classes=(8, 9), shortcut="stripes", train_agreement=0.85,
        val_agreement=0.85, n_val=4000),
    _fm("fmnist", "fm-dress-coat-bright85", classes=(3, 4), shortcut="brightness", train_agreement=0.85,
        val_agreement=0.85, n_val=4000),
    _fm("fmnist-multiclass", "fm-3class-stripes-tied90", marked=True, classes=(0, 1, 2), tied_class=1,
        shortcut="stripes", agreement=0.9),
    _fm("fmnist-multiclass", "fm-4class-bright-tied85", marked=True, classes=(2, 5, 7, 8), tied_class=3,
        shortcut="brightness", agreement=0.85),
    _reviews("tabular-text", "reviews-contrast", "contrast"),
    _reviews("tabular-text", "reviews-love", "love"),
    # Fifth batch, declared together before any run on it (after the fourth batch's report
    # half had been read once): two new axes, unequal class frequencies (CelebA-like) and the
    # size of the validation set, each with controls; and one more pair in the weak-core,
    # tied-one and mlp-erm families.
    _syn("class-imbalance", "lin-imbalance-80", dim=64, core_strength=1.5, class_prior=(0.8, 0.2)),
    _syn("class-imbalance", "lin-imbalance-90", dim=64, core_strength=1.5, class_prior=(0.9, 0.1)),
    _syn("class-imbalance", "lin-imbalance-3class", n_classes=3, dim=64, core_strength=1.8,
         class_prior=(0.6, 0.3, 0.1)),
    _syn("class-imbalance", "lin-imbalance-weak-core", dim=128, core_strength=1.1, shortcut_strength=3.0,
         class_prior=(0.75, 0.25)),
    _syn("class-imbalance", "lin-mark-rare-class", n_classes=3, tie="one", tied_class=1, dim=64,
         core_strength=1.6, train_agreement=0.9, class_prior=(0.45, 0.15, 0.4)),
    _syn("class-imbalance", "lin-imbalance-val-balanced", dim=64, core_strength=1.4, val_balanced=True,
         class_prior=(0.8, 0.2)),
    _syn("val-size", "lin-small-val", dim=64, core_strength=1.5, n_val=600),
    _syn("val-size", "lin-small-val-weak", dim=64, core_strength=1.0, shortcut_strength=3.0, n_val=600),
    _syn("val-size", "lin-large-val", dim=128, core_strength=1.2, shortcut_strength=2.5, n_train=8000,
         n_val=8000),
    _syn("val-size", "lin-large-val-3class", n_classes=3, dim=96, core_strength=1.6, n_train=8000,
         n_val=6000),
    _syn("control", "control-imbalanced", control=True, dim=64, core_strength=1.5, shortcut_strength=0.0,
         class_prior=(0.85, 0.15)),
    _syn("control", "control-small-val", control=True, dim=64, core_strength=1.5, shortcut_strength=0.0,
         n_val=600),
    _syn("control", "control-imbalanced-3class", control=True, n_classes=3, dim=64, core_strength=1.8,
         shortcut_strength=0.0, class_prior=(0.5, 0.3, 0.2)),
    _syn("control", "control-large-val", control=True, dim=128, core_strength=1.2, shortcut_strength=0.0,
         n_train=8000, n_val=8000),
    _syn("weak-core", "lin-weak-core-72", dim=72, core_strength=1.0, shortcut_strength=2.8),
    _syn("weak-core", "lin-weak-core-80", dim=80, core_strength=1.1, shortcut_strength=2.5),
    _syn("tied-one", "lin-mark-3class-d96", n_classes=3, tie="one", tied_class=0, dim=96, core_strength=1.7,
         train_agreement=0.88),
    _syn("tied-one", "lin-mark-4class-weak", n_classes=4, tie="one", tied_class=2, dim=64, core_strength=1.5,
         train_agreement=0.88),
    _syn("mlp-erm", "mlp-imbalanced", erm="mlp", dim=64, core_strength=1.2, shortcut_strength=3.0,
         class_prior=(0.8, 0.2)),
    _syn("mlp-erm", "mlp-small-val", erm="mlp", dim=64, core_strength=1.5, n_val=600),
    # Sixth batch, declared together before any run on it (after the fifth batch's report half
    # had been read): one more pair in eight families.
    _syn("class-imbalance", "lin-imbalance-85-d128", dim=128, core_strength=1.3, class_prior=(0.85, 0.15)),
    _syn("class-imbalance", "lin-imbalance-70-3class", n_classes=3, dim=64, core_strength=1.7,
         class_prior=(0.7, 0.2, 0.1)),
    _syn("val-size", "lin-small-val-3class", n_classes=3, dim=64, core_strength=1.8, n_val=900),
    _syn("val-size", "lin-medium-val-strong", dim=64, core_strength=2.2, shortcut_strength=3.0, n_val=1200),
    _syn("tied-one", "lin-mark-3class-d48", n_classes=3, tie="one", tied_class=1, dim=48, core_strength=1.6,
         train_agreement=0.92),
    _syn("tied-one", "lin-mark-5class-weak", n_classes=5, tie="one", tied_class=4, dim=64, core_strength=1.6,
         train_agreement=0.88),
    _syn("multiclass", "lin-5class-d128", n_classes=5, dim=128, core_strength=2.0),
    _syn("multiclass", "lin-3class-weak", n_classes=3, dim=64, core_strength=1.2),
    _syn("control", "control-6class", control=True, n_classes=6, dim=96, core_strength=2.2, shortcut_strength=0.0),
    _syn("control", "control-imbalanced-noisy", control=True, dim=64, core_strength=1.5, shortcut_strength=0.0,
         label_noise=0.1, class_prior=(0.8, 0.2)),
    _syn("noise", "lin-noise-10-imb", dim=64, core_strength=1.5, label_noise=0.1, class_prior=(0.75, 0.25)),
    _syn("noise", "lin-noise-15", dim=96, core_strength=1.6, label_noise=0.15),
    _syn("multi-attribute", "lin-two-attrs-96", n_attributes=2, dim=96, core_strength=1.6, shortcut_strength=2.2),
    _syn("multi-attribute", "lin-two-attrs-strong", n_attributes=2, dim=64, core_strength=1.4,
         shortcut_strength=2.6),
    _fm("fmnist", "fm-pullover-shirt-bg85", classes=(2, 6), train_agreement=0.85, val_agreement=0.85, n_val=4000),
    _fm("fmnist", "fm-trouser-dress-bright85", classes=(1, 3), shortcut="brightness", train_agreement=0.85,
        val_agreement=0.85, n_val=4000),
    # Seventh batch, declared together before any run on it (after the sixth batch's report half
    # had been read twice): two new axes, features from one random ReLU layer (non-negative and
    # sparse, like pooled CNN embeddings) and heavy-tailed noise, each with a control; a validation
    # set biased against the training bias; and more three- and four-class marks at 80-90%.
    _syn("relu-features", "relu-weak-core", encoder="relu", dim=128, core_strength=1.2, shortcut_strength=3.0),
    _syn("relu-features", "relu-3class", encoder="relu", n_classes=3, dim=96, core_strength=1.8),
    _syn("relu-features", "relu-mark-3class", encoder="relu", n_classes=3, tie="one", tied_class=1, dim=96,
         core_strength=1.8, train_agreement=0.9),
    _syn("relu-features", "relu-minority-3pct", encoder="relu", dim=96, core_strength=1.6, train_agreement=0.97,
         n_train=6000),
    _syn("heavy-tail", "t3-weak-core", noise_df=3.0, dim=64, core_strength=1.2, shortcut_strength=3.0),
    _syn("heavy-tail", "t4-3class", noise_df=4.0, n_classes=3, dim=64, core_strength=1.8),
    _syn("control", "control-relu", control=True, encoder="relu", dim=96, core_strength=1.6, shortcut_strength=0.0),
    _syn("control", "control-t3", control=True, noise_df=3.0, dim=64, core_strength=1.5, shortcut_strength=0.0),
    _syn("heldout-bias", "lin-val-anti-bias", dim=64, core_strength=1.5, val_agreement=0.3),
    _syn("heldout-bias", "lin-val-anti-bias-3class", n_classes=3, dim=64, core_strength=1.8, val_agreement=0.2),
    _syn("tied-one", "lin-mark-3class-80", n_classes=3, tie="one", tied_class=0, dim=64, core_strength=1.8,
         train_agreement=0.8),
    _syn("tied-one", "lin-mark-4class-85", n_classes=4, tie="one", tied_class=3, dim=96, core_strength=1.8,
         train_agreement=0.85),
    _fm("fmnist-multiclass", "fm-3class-stripes-tied80", marked=True, classes=(3, 4, 6), tied_class=0,
        shortcut="stripes", agreement=0.8),
    _fm("fmnist-multiclass", "fm-4class-bg-tied90", marked=True, classes=(0, 2, 5, 9), tied_class=2,
        agreement=0.9),
    # Eighth batch, declared before any run of its report members: controls on image features (the
    # shortcut is injected but independent of the class, so there is nothing to repair). The two
    # development members had been run as probes after the seventh batch's development half showed
    # a repaired control on ReLU features.
    _fm("fmnist-control", "fm-control-bg", control=True, classes=(0, 3), train_agreement=0.5, val_agreement=0.5,
        n_val=4000),
    _fm("fmnist-control", "fm-control-bright-3class", control=True, marked=True, classes=(1, 4, 8), tied_class=1,
        shortcut="brightness", agreement=0.5),
    _fm("fmnist-control", "fm-control-stripes-3class", control=True, marked=True, classes=(5, 7, 9), tied_class=0,
        shortcut="stripes", agreement=0.5),
    _fm("fmnist-control", "fm-control-stripes", control=True, classes=(6, 8), shortcut="stripes",
        train_agreement=0.5, val_agreement=0.5, n_val=4000),
    # Ninth batch, declared together before any run on it: more controls and shortcut members on
    # features that are not Gaussian (a ReLU layer, Student-t noise), where rounds 6-7 found the
    # guard's premise weakest; each family gains development and report members alike.
    _syn("control", "control-relu-3class", control=True, encoder="relu", n_classes=3, dim=96, core_strength=1.8,
         shortcut_strength=0.0),
    _syn("control", "control-t4-3class", control=True, noise_df=4.0, n_classes=3, dim=64, core_strength=1.8,
         shortcut_strength=0.0),
    _syn("control", "control-t3-128", control=True, noise_df=3.0, dim=128, core_strength=1.4, shortcut_strength=0.0),
    _syn("control", "control-relu-256", control=True, encoder="relu", dim=256, core_strength=1.5,
         shortcut_strength=0.0),
    _syn("relu-features", "relu-weak-core-64", encoder="relu", dim=64, core_strength=1.2, shortcut_strength=3.0),
    _syn("relu-features", "relu-mark-4class", encoder="relu", n_classes=4, tie="one", tied_class=2, dim=128,
         core_strength=1.8, train_agreement=0.9),
    _syn("heavy-tail", "t3-mark-3class", noise_df=3.0, n_classes=3, tie="one", tied_class=1, dim=64,
         core_strength=1.8, train_agreement=0.9),
    _syn("heavy-tail", "t4-weak-core-128", noise_df=4.0, dim=128, core_strength=1.3, shortcut_strength=3.0),
    # Tenth batch, declared together before any run on it: heavy tails shared by a row's
    # coordinates (a multivariate t, elliptical), the kind that normal scores bend (round 9 of
    # docs/label-free-design.md); controls and shortcut members, in both halves.
    _syn("control", "control-mvt3", control=True, noise_df=3.0, noise_shared_scale=True, dim=64, core_strength=1.5,
         shortcut_strength=0.0),
    _syn("control", "control-mvt4-3class", control=True, noise_df=4.0, noise_shared_scale=True, n_classes=3,
         dim=96, core_strength=1.8, shortcut_strength=0.0),
    _syn("control", "control-mvt3-128", control=True, noise_df=3.0, noise_shared_scale=True, dim=128,
         core_strength=1.4, shortcut_strength=0.0),
    _syn("control", "control-mvt5-256", control=True, noise_df=5.0, noise_shared_scale=True, dim=256,
         core_strength=1.5, shortcut_strength=0.0),
    _syn("heavy-tail", "mvt3-weak-core", noise_df=3.0, noise_shared_scale=True, dim=64, core_strength=1.2,
         shortcut_strength=3.0),
    _syn("heavy-tail", "mvt4-mark-3class", noise_df=4.0, noise_shared_scale=True, n_classes=3, tie="one",
         tied_class=2, dim=64, core_strength=1.8, train_agreement=0.9),
    _syn("heavy-tail", "mvt3-minority-3pct", noise_df=3.0, noise_shared_scale=True, dim=96, core_strength=1.6,
         train_agreement=0.97, n_train=6000),
    _syn("heavy-tail", "mvt4-weak-core-128", noise_df=4.0, noise_shared_scale=True, dim=128, core_strength=1.3,
         shortcut_strength=3.0),
    # eleventh batch: correlated noise (shared factors), far from isotropic like learned embeddings
    _syn("control", "control-factor4", control=True, noise_factors=4, dim=64, core_strength=1.0,
         shortcut_strength=0.0),
    _syn("control", "control-factor16-3class", control=True, noise_factors=16, n_classes=3, dim=96,
         core_strength=1.3, shortcut_strength=0.0),
    _syn("control", "control-factor8-128", control=True, noise_factors=8, dim=128, core_strength=1.0,
         shortcut_strength=0.0),
    _syn("control", "control-factor4-4class", control=True, noise_factors=4, n_classes=4, dim=64,
         core_strength=1.3, shortcut_strength=0.0),
    _syn("factor-noise", "factor4-weak-core", noise_factors=4, dim=64, core_strength=0.7, shortcut_strength=3.0),
    _syn("factor-noise", "factor16-mark-3class", noise_factors=16, n_classes=3, tie="one", tied_class=2, dim=96,
         core_strength=1.2, train_agreement=0.9),
    _syn("factor-noise", "factor8-minority-3pct", noise_factors=8, dim=96, core_strength=1.1, train_agreement=0.97,
         n_train=6000),
    _syn("factor-noise", "factor4-weak-core-128", noise_factors=4, dim=128, core_strength=0.8,
         shortcut_strength=3.0),
    # Twelfth batch, declared together before any run on it: classes of ordinary size whose ERM
    # head errs on few validation rows (a strong core, a rare minority), where the audit regions
    # hold few rows (round 12 of docs/label-free-design.md), with controls of the same kind.
    _syn("strong-core", "lin-strong-core-s3-d128", dim=128, core_strength=2.6, shortcut_strength=3.0),
    _syn("strong-core", "lin-strong-core-s4-d96", dim=96, core_strength=2.7, shortcut_strength=4.0),
    _syn("minority", "lin-minority-0.7pct", dim=96, core_strength=1.8, train_agreement=0.993, n_train=8000,
         n_val=4000),
    _syn("minority", "lin-minority-1pct-3class", n_classes=3, dim=64, core_strength=2.0, train_agreement=0.99,
         n_train=9000, n_val=4500),
    _syn("control", "control-strong-core", control=True, dim=64, core_strength=3.0, shortcut_strength=0.0),
    _syn("control", "control-strong-core-3class", control=True, n_classes=3, dim=96, core_strength=3.2,
         shortcut_strength=0.0),
    _syn("control", "control-relu-strong", control=True, encoder="relu", dim=96, core_strength=3.0,
         shortcut_strength=0.0),
    _syn("control", "control-factor4-strong", control=True, noise_factors=4, dim=64, core_strength=2.4,
         shortcut_strength=0.0),
    _syn("mlp-erm", "mlp-strong-core-s4", erm="mlp", dim=64, core_strength=2.6, shortcut_strength=4.0),
    _syn("mlp-erm", "mlp-minority-1pct", erm="mlp", dim=64, core_strength=1.8, train_agreement=0.99,
         n_train=8000, n_val=4000),
    _fm("fmnist-multiclass", "fm-3class-bg-tied92", marked=True, classes=(1, 5, 8), tied_class=0, agreement=0.92),
    _fm("fmnist-multiclass", "fm-3class-stripes-tied92", marked=True, classes=(3, 7, 9), tied_class=2,
        shortcut="stripes", agreement=0.92),
    _fm("fmnist-control", "fm-control-bg-3class", control=True, marked=True, classes=(0, 7, 8), tied_class=1,
        agreement=0.5),
    _fm("fmnist-control", "fm-control-stripes-4class", control=True, marked=True, classes=(1, 2, 7, 9),
        tied_class=3, shortcut="stripes", agreement=0.5),
    # Batch 13: three-class marks tied to one class at 86-87% (the kind of problem on which the value
    # read on the twins' regions failed the report half in round 5), and three-class controls on
    # image, ReLU and correlated features (round 14 of docs/label-free-design.md).
    _fm("fmnist-multiclass", "fm-3class-stripes-tied86", marked=True, classes=(2, 6, 9), tied_class=1,
        shortcut="stripes", agreement=0.86),
    _fm("fmnist-multiclass", "fm-3class-stripes-tied87", marked=True, classes=(0, 4, 8), tied_class=0,
        shortcut="stripes", agreement=0.87),
    _fm("fmnist-multiclass", "fm-3class-bg-tied86", marked=True, classes=(1, 3, 9), tied_class=2, agreement=0.86),
    _fm("fmnist-multiclass", "fm-3class-bright-tied86", marked=True, classes=(4, 5, 7), tied_class=1,
        shortcut="brightness", agreement=0.86),
    _syn("tied-one", "lin-mark-3class-86", n_classes=3, tie="one", tied_class=0, dim=96, core_strength=1.6,
         train_agreement=0.86),
    _syn("tied-one", "lin-mark-3class-87-d128", n_classes=3, tie="one", tied_class=1, dim=128, core_strength=1.7,
         train_agreement=0.87),
    _fm("fmnist-control", "fm-control-stripes-3class-b", control=True, marked=True, classes=(2, 6, 9),
        tied_class=1, shortcut="stripes", agreement=0.5),
    _fm("fmnist-control", "fm-control-bg-3class-b", control=True, marked=True, classes=(1, 3, 9), tied_class=2,
        agreement=0.5),
    _syn("control", "control-relu-3class-128", control=True, encoder="relu", n_classes=3, dim=128,
         core_strength=1.8, shortcut_strength=0.0),
    _syn("control", "control-factor8-3class", control=True, noise_factors=8, n_classes=3, dim=96,
         core_strength=1.8, shortcut_strength=0.0),
)
_BATCH_ENDS = (37, 63, 73, 101, 121, 137, 151, 155, 163, 171, 179, 193)   # members listed before batch 2, 3, ... starts


def _assign_roles(members: tuple[StressMember, ...]) -> tuple[StressMember, ...]:
    seen: dict[str, int] = {}
    out = []
    for i, m in enumerate(members):
        k = seen.get(m.family, 0)
        seen[m.family] = k + 1
        batch = 1 + sum(i >= end for end in _BATCH_ENDS)
        out.append(replace(m, role=ROLES[k % 2], batch=batch))
    return tuple(out)


STRESS_SUITE: dict[str, StressMember] = {m.name: m for m in _assign_roles(_MEMBERS)}
"""Every member by name, with its role."""


def suite_members(role: str | None = None, *, kinds: tuple[str, ...] = ("synthetic", "offline"),
                  ) -> list[StressMember]:
    """Members of one half (``"dev"``, ``"report"``) or of both (``None``), of the given kinds."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    return [m for m in STRESS_SUITE.values()
            if (role is None or m.role == role) and m.kind in kinds]

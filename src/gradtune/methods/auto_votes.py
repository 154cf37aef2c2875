"""Votes over halvings of the validation rows: ``gradtune-auto``'s decision made more than once.

Everything ``gradtune-auto`` decides from (the audit regions, the candidates fitted on one
half and scored on the other, the coverage rule, the structure test) depends on which
validation rows fall in which half. A decision that flips when the same rows are dealt
into halves another way rests on a few rows, not on the problem. With ``split_votes=n``
the method is fitted on the bundle's own halves and, as long as the outcome is open, on
re-dealt halves (:func:`redealt_halves`, class-stratified, the same sizes); the ERM head is
replaced only when more than half of the ``n`` fits replace it. With ``votes_on="repairs"``
only a repair is put to the vote: a fit that keeps the ERM head on the bundle's halves
stands (no extra cost where nothing is repaired).

No group label is read: a re-dealt bundle has the same rows, labels and features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods.base import MethodResult

__all__ = ["VOTES_ON", "redealt_halves", "split_vote"]

VOTES_ON = ("always", "repairs")


def redealt_halves(bundle: EmbeddingBundle, rng: np.random.Generator) -> EmbeddingBundle:
    """The bundle with its ``heldout`` and ``selection`` rows dealt anew: within each class, the
    rows in a random order, the first ones (the class's share of ``heldout`` rows, rounded) to
    ``heldout`` and the rest to ``selection``; every other array is the bundle's own."""
    split = np.array(bundle.split, copy=True)
    pool = np.flatnonzero((split == "heldout") | (split == "selection"))
    share = float(np.mean(split[pool] == "heldout")) if pool.size else 0.5
    labels = np.asarray(bundle.labels)[pool]
    for k in np.unique(labels):
        rows = rng.permutation(pool[labels == k])
        cut = int(round(share * rows.size))
        split[rows[:cut]] = "heldout"
        split[rows[cut:]] = "selection"
    return replace(bundle, split=split)


def _kept(result: MethodResult) -> bool:
    return bool(result.diagnostics.get("guard_kept_erm", False))


def split_vote(fit_split: Callable[[EmbeddingBundle], MethodResult], bundle: EmbeddingBundle,
               first: MethodResult, n_splits: int, rng: np.random.Generator, votes_on: str = "always",
               ) -> MethodResult:
    """The majority decision of up to ``n_splits`` (odd) fits.

    Parameters
    ----------
    fit_split : the method fitted on one bundle (its halves as given)
    bundle : the bundle ``first`` was fitted on
    first : that fit
    n_splits : odd int >= 1
    rng : numpy Generator (the re-dealt halves)
    votes_on : {"always", "repairs"}
        ``"repairs"``: ``first`` stands when it keeps the ERM head.

    Returns
    -------
    The first fit (in order: ``first``, then the re-dealt ones) whose decision is the
    majority's, with ``diagnostics["split_votes"]`` (per fit: kept, reason, chosen setting)
    and, when the majority keeps the ERM head against ``first``'s repair, a reason that says so.
    """
    if votes_on not in VOTES_ON:
        raise ValueError(f"votes_on must be one of {VOTES_ON}, got {votes_on!r}")
    results, kept = [first], [_kept(first)]
    if n_splits > 1 and not (votes_on == "repairs" and kept[0]):
        need = n_splits // 2 + 1
        while max(sum(kept), len(kept) - sum(kept)) < need:   # the outcome is open
            results.append(fit_split(redealt_halves(bundle, rng)))
            kept.append(_kept(results[-1]))
    keep = 2 * sum(kept) > len(kept)
    chosen = results[kept.index(keep)]
    votes: list[dict[str, Any]] = [{"kept": k, "reason": r.diagnostics.get("guard_reason"),
                                    "chosen_setting": r.diagnostics.get("chosen_setting")}
                                   for k, r in zip(kept, results, strict=True)]
    diag = {**chosen.diagnostics, "split_votes": votes}
    if keep and not kept[0]:
        diag["guard_reason"] = (f"the repair chosen on the validation halves was not chosen on {sum(kept)} "
                                f"of {len(kept)} dealings of the same rows into halves (split_votes={n_splits}): "
                                "its evidence rests on which rows fall in which half")
    return MethodResult(chosen.model, diag)

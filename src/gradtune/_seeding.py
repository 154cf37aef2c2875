"""Named, independent random streams from one seed.

A method's ``seed`` feeds several random choices (which rows to fine-tune on, the
fine-tuning sampler, a solver's ``random_state``, ...). :func:`seed_streams` splits it
with ``numpy.random.SeedSequence(seed).spawn``: the stream named i-th is the i-th
child, so each choice draws from its own stream and adding a draw to one choice leaves
the others unchanged. The order of the names is part of a method's protocol (it fixes
which child each choice gets); GradTune's split is :data:`GRADTUNE_STREAMS`.

Nothing here touches global random state.
"""

from __future__ import annotations

import numpy as np
import torch

from gradtune._validation import GradTuneInputError, make_generator

__all__ = ["GRADTUNE_STREAMS", "SeedStreams", "seed_streams"]

#: GradTune's split: stream 0 draws the fine-tuning set, stream 1 seeds fine-tuning.
GRADTUNE_STREAMS: tuple[str, str] = ("subset", "finetune")


class SeedStreams:
    """The children of ``SeedSequence(seed)``, one per name, in the order of the names.

    Parameters
    ----------
    seed : int >= 0
    names : sequence of str
        Distinct stream names; the i-th name is the i-th spawned child.
    """

    def __init__(self, seed: int, names: tuple[str, ...]) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise GradTuneInputError(f"seed must be an integer >= 0, got {seed!r}")
        if not names or len(set(names)) != len(names):
            raise GradTuneInputError(f"stream names must be distinct and at least one, got {names!r}")
        self.seed = int(seed)
        self.names = tuple(names)
        self._children = dict(zip(self.names, np.random.SeedSequence(self.seed).spawn(len(self.names)),
                                  strict=True))

    def sequence(self, name: str) -> np.random.SeedSequence:
        """The stream's ``SeedSequence``."""
        try:
            return self._children[name]
        except KeyError:
            raise GradTuneInputError(f"no seed stream {name!r}; streams are {list(self.names)}") from None

    def rng(self, name: str) -> np.random.Generator:
        """A fresh numpy ``Generator`` on the stream (``default_rng(child)``)."""
        return np.random.default_rng(self.sequence(name))

    def integer(self, name: str, index: int = 0, modulo: int | None = None) -> int:
        """The ``index``-th 32-bit word of the stream's state (``generate_state(index + 1)[index]``),
        reduced ``% modulo`` when given: an int seed for code that takes one."""
        word = int(self.sequence(name).generate_state(index + 1)[index])
        return word if modulo is None else word % modulo

    def generator(self, name: str, device: str | torch.device = "cpu") -> torch.Generator:
        """A ``torch.Generator`` seeded with :meth:`integer` of the stream."""
        return make_generator(self.integer(name), device=device)


def seed_streams(seed: int, *names: str) -> SeedStreams:
    """Split ``seed`` into the named streams (see the module doc), e.g.
    ``seed_streams(seed, *GRADTUNE_STREAMS)``."""
    return SeedStreams(seed, names)

"""Named seed streams: the children of SeedSequence(seed).spawn, in the order of the names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtune._seeding import GRADTUNE_STREAMS, seed_streams
from gradtune._validation import GradTuneInputError


def test_streams_are_the_spawned_children_in_name_order():
    s = seed_streams(7, "a", "b", "c")
    children = np.random.SeedSequence(7).spawn(3)
    for name, child in zip(("a", "b", "c"), children, strict=True):
        np.testing.assert_array_equal(s.rng(name).random(5), np.random.default_rng(child).random(5))
        assert s.integer(name) == int(child.generate_state(1)[0])
        assert s.integer(name, index=1) == int(child.generate_state(2)[1])
        assert s.integer(name, modulo=97) == int(child.generate_state(1)[0]) % 97
        ref = torch.Generator().manual_seed(int(child.generate_state(1)[0]))
        assert torch.equal(torch.randperm(20, generator=s.generator(name)), torch.randperm(20, generator=ref))


def test_a_stream_does_not_depend_on_how_many_follow_it():
    two, three = seed_streams(3, *GRADTUNE_STREAMS), seed_streams(3, *GRADTUNE_STREAMS, "replay")
    assert two.integer("finetune") == three.integer("finetune")
    assert two.integer("subset") != two.integer("finetune")


def test_rng_is_fresh_on_every_call():
    s = seed_streams(0, "x")
    assert s.rng("x").random() == s.rng("x").random()


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_bad_seeds_are_rejected(seed):
    with pytest.raises(GradTuneInputError, match="seed"):
        seed_streams(seed, "x")


def test_bad_names_are_rejected():
    with pytest.raises(GradTuneInputError, match="distinct"):
        seed_streams(0, "x", "x")
    with pytest.raises(GradTuneInputError, match="no seed stream 'y'"):
        seed_streams(0, "x").rng("y")

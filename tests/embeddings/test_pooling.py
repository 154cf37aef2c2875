"""The declared pooling of a frozen encoder's output (gradtune.embeddings.pooling)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from gradtune import GradTuneInputError
from gradtune.embeddings.pooling import pool_encoder_output


@dataclass
class Out:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None


def test_auto_rules_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(4, 5, generator=gen)
    assert torch.equal(pool_encoder_output(flat), flat)  # (B, e) as is
    states = torch.randn(2, 3, 4, generator=gen)
    pooled = torch.randn(2, 4, generator=gen)
    assert torch.equal(pool_encoder_output(Out(states, pooled)), pooled)  # pooler_output first
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    got = pool_encoder_output(Out(states), {"attention_mask": mask})
    torch.testing.assert_close(got, torch.stack([states[0, 0], states[1].mean(0)]))
    # a mapping output and a bare (B, T, H) tensor are pooled the same way
    torch.testing.assert_close(pool_encoder_output({"last_hidden_state": states}, {"attention_mask": mask}), got)
    torch.testing.assert_close(pool_encoder_output(states, {"attention_mask": mask}), got)
    # declared rules override "auto"
    torch.testing.assert_close(pool_encoder_output(Out(states, pooled), {"attention_mask": mask}, "mean"), got)
    assert torch.equal(pool_encoder_output(Out(states, pooled), None, "cls"), states[:, 0])


def test_refusals_name_the_fix() -> None:
    with pytest.raises(GradTuneInputError, match="pooling must be one of auto, pooler, mean, cls"):
        pool_encoder_output(torch.ones(2, 3), None, "max")
    with pytest.raises(GradTuneInputError, match="no pooler_output; use pooling='mean'"):
        pool_encoder_output(Out(torch.ones(2, 3, 4)), None, "pooler")
    with pytest.raises(GradTuneInputError, match=r"shape \(2, 3, 4, 4\).*callable"):
        pool_encoder_output(torch.ones(2, 3, 4, 4))
    with pytest.raises(GradTuneInputError, match="attention_mask"):
        pool_encoder_output(torch.ones(2, 3, 4), {"attention_mask": torch.ones(2, 5)})
    with pytest.raises(GradTuneInputError, match=r"after the pooling callable have shape \(2, 3, 4\)"):
        pool_encoder_output(torch.ones(2, 3, 4), None, lambda out, inp: out)

"""One feature vector per row from whatever a frozen encoder returns.

A frozen encoder (the pretrained backbone a classifier was fine-tuned from) may return a
(B, e) tensor, a Hugging Face ``ModelOutput`` with ``pooler_output`` and / or
``last_hidden_state`` (B, T, H), a mapping, or a tuple. Group inference needs one row of
fixed width per sample, whatever the padded width T of the batch, so the output is
pooled by a declared rule:

* ``"auto"`` (default): a (B, e) tensor as is; else ``pooler_output`` when the output has
  one; else the attention-mask-weighted mean of ``last_hidden_state`` (or of a (B, T, H)
  tensor). Padding tokens never enter the mean, so a row's features do not depend on how
  wide its batch was padded.
* ``"pooler"``: ``pooler_output``, an error when there is none.
* ``"mean"``: the attention-mask-weighted mean of the token states, even when a
  ``pooler_output`` exists (sentence-transformers models are trained for this).
* ``"cls"``: the first token's state, ``last_hidden_state[:, 0]``.
* a callable ``f(output, inputs) -> Tensor (B, e)`` overrides all of these.

The attention mask is the ``attention_mask`` entry of the batch's inputs (a mapping);
without one every token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradtune._validation import GradTuneInputError

__all__ = ["POOLINGS", "Pooling", "pool_encoder_output", "masked_mean"]

POOLINGS = ("auto", "pooler", "mean", "cls")
Pooling = str | Callable[[Any, Any], Any]


def _field(output: Any, name: str) -> Any:
    """``output.name`` or ``output[name]``; None when absent."""
    value = getattr(output, name, None)
    if value is None and isinstance(output, Mapping):
        value = output.get(name)
    return value


def _token_states(output: Any) -> torch.Tensor | None:
    """The (B, T, H) token states of an encoder output, or None."""
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 3 else None
    states = _field(output, "last_hidden_state")
    if isinstance(states, torch.Tensor):
        return states
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) \
            and output[0].ndim == 3:
        return output[0]
    return None


def _attention_mask(inputs: Any) -> torch.Tensor | None:
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return mask if isinstance(mask, torch.Tensor) else None


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens of ``states`` (B, T, H) weighted by ``mask`` (B, T); returns (B, H).

    A row whose mask is all zero gets zeros (its sum is divided by 1, not by 0).
    """
    if mask is None:
        return states.mean(dim=1)
    if mask.shape != states.shape[:2]:
        raise GradTuneInputError(
            f"the encoder's token states have shape {tuple(states.shape)} but the batch's attention_mask "
            f"has {tuple(mask.shape)}; pass pooling= a callable that reduces the output to (B, e)")
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _check_rows(pooled: Any, how: str) -> torch.Tensor:
    t = torch.as_tensor(pooled)
    if t.ndim != 2:
        raise GradTuneInputError(
            f"the encoder's features after {how} have shape {tuple(t.shape)}; expected (batch, features). "
            "Pass pooling= a callable f(output, inputs) that returns a (batch, features) tensor")
    return t


def pool_encoder_output(output: Any, inputs: Any = None, pooling: Pooling = "auto") -> torch.Tensor:
    """Reduce an encoder's output on one batch to features (B, e).

    Parameters
    ----------
    output : Tensor (B, e) or (B, T, H), ``ModelOutput``, mapping or tuple
        What the encoder returned for the batch.
    inputs : the batch's inputs (a mapping with ``attention_mask`` for padded text), optional
    pooling : {"auto", "pooler", "mean", "cls"} or callable, default="auto"
        See the module docstring.

    Returns
    -------
    Tensor (B, e), detached, on the encoder's device.
    """
    if callable(pooling):
        return _check_rows(pooling(output, inputs), "the pooling callable").detach()
    if pooling not in POOLINGS:
        raise GradTuneInputError(f"pooling must be one of {', '.join(POOLINGS)} or a callable, got {pooling!r}")
    if pooling == "auto" and isinstance(output, torch.Tensor) and output.ndim == 2:
        return output.detach()
    pooler = _field(output, "pooler_output")
    if pooling == "pooler" or (pooling == "auto" and isinstance(pooler, torch.Tensor)):
        if not isinstance(pooler, torch.Tensor):
            raise GradTuneInputError(
                f"pooling='pooler' but the encoder's {type(output).__name__} output has no pooler_output; "
                "use pooling='mean' or 'cls'")
        return _check_rows(pooler, "pooler_output").detach()
    states = _token_states(output)
    if states is None:
        shape = f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""
        raise GradTuneInputError(
            f"cannot pool the encoder's {type(output).__name__} output{shape}: it has no (B, e) tensor, "
            "pooler_output or (B, T, H) last_hidden_state. Pass pooling= a callable f(output, inputs) "
            "that returns a (batch, features) tensor")
    if pooling == "cls":
        return states[:, 0].detach()
    return masked_mean(states.detach(), _attention_mask(inputs))

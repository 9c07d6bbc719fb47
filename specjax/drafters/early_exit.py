"""Self-speculation by early exit: the target's first k layers + its final norm + its LM head
draft for the full target (LayerSkip / "draft & verify" style, without training).

Dimension legend: L layers of the target, k exit layer (1 <= k < L).

The early-exit model is an ordinary `Model` with `num_layers=k` whose decode-layout weights
are the target's own arrays: its first k layers, embeddings, final norm and head (nothing is
copied: the decode layout keeps each layer in arrays of its own). It then drafts through
`DraftModelDrafter`, which keeps a KV cache for its k layers.

Not shared (a deliberate simplification): the drafter's k-layer cache duplicates the target's
first k layers for accepted tokens (k/L of the target's cache memory). Sharing the target
cache would need the drafter to write into loop state it does not own; the exactness contract
holds either way.
"""

from __future__ import annotations

import dataclasses

from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.transformer import DecodeParams, Model, Params, abstract_model, params_dtype


def early_exit_drafter(
    target: Model, target_params: Params, exit_layer: int
) -> tuple[DraftModelDrafter, Params]:
    """(drafter, drafter_params) drafting with the first `exit_layer` layers of the target."""
    num_layers = target.config.num_layers
    if not 1 <= exit_layer < num_layers:
        raise ValueError(
            f"exit_layer must be in [1, {num_layers - 1}] for a {num_layers}-layer target, "
            f"got {exit_layer}"
        )
    config = target.config.replace(num_layers=exit_layer)
    model, _ = abstract_model(config, params_dtype(target_params))
    decode: DecodeParams = target.decode_params(target_params)
    params = dataclasses.replace(decode, layers=decode.layers[:exit_layer])
    return DraftModelDrafter(model), params

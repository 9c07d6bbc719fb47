"""Drafters: sources of draft tokens behind one protocol.

The protocol, `specjax.decoding.drafter.Drafter`, is the loop's side of the contract and lives
beside the loop; the drafters here implement it.

By name, every drafter goes through one registry (`registry`): kinds, their knobs and
defaults, the ``kind:key=value`` spec syntax and the tree syntax. The CLI, experiment
configs, the benchmarks and training all build their drafters with `registry.build`.

    from specjax.drafters import registry
    drafter = registry.build("ngram:ngram_n=3", (model, params))
    drafter = registry.build("early-exit:exit_layer=10", (model, params))
    drafter = registry.build("eagle:heads=runs/eagle_smollm_1024/drafter", (model, params))
    specjax.generate((model, params), drafter, prompt_ids, gamma=4)
"""

from __future__ import annotations

from specjax.drafters import registry
from specjax.drafters.registry import DrafterSpec, build, parse_spec

__all__ = ["DrafterSpec", "build", "parse_spec", "registry"]

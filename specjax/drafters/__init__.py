"""Drafters: sources of draft tokens behind one protocol (`base.Drafter`).

`build_drafter(kind, target, ...)` makes any of them from a name and options; the experiment
runner (`specjax.eval.runner`) and the benchmark's drafter specs (`specjax.eval.bench`) both
build their drafters through it.

    drafter = build_drafter("ngram", (model, params), max_n=3)
    drafter = build_drafter("early-exit", (model, params), exit_layer=10)
    drafter = build_drafter("eagle", (model, params), heads="runs/eagle_smollm_1024/drafter")
    specjax.generate((model, params), drafter, prompt_ids, gamma=4)
"""

from __future__ import annotations

from typing import Any

# Both spellings of early exit are accepted: the runner's configs say "early-exit", the
# benchmark's drafter specs "early_exit".
DRAFTER_KINDS = ("model", "ngram", "early_exit", "eagle", "medusa")


def normalize_kind(kind: str) -> str:
    """``"early-exit"`` -> ``"early_exit"``; unknown kinds fail with the list of known ones."""
    name = str(kind).strip().replace("-", "_")
    if name not in DRAFTER_KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}; known: {', '.join(DRAFTER_KINDS)}")
    return name


def default_exit_layer(num_layers: int) -> int:
    """The early-exit layer used when none is given: a third of the target's depth."""
    return max(1, num_layers // 3)


def build_drafter(
    kind: str,
    target: tuple[Any, Any],
    *,
    draft: tuple[Any, Any] | None = None,
    max_n: int = 3,
    min_n: int = 1,
    exit_layer: int = 0,
    heads: str = "",
) -> Any:
    """What `specjax.generate` takes as the drafter of ``kind`` for ``target`` (Model, params).

    Args:
      kind: "model": a separate draft model, ``draft`` = (Model, params), returned as is;
        "ngram": prompt lookup over n-grams of min_n..max_n tokens (no weights);
        "early_exit" (or "early-exit"): the target's first ``exit_layer`` layers, its final
        norm and LM head (0 = `default_exit_layer`), as (DraftModelDrafter, params);
        "eagle" / "medusa": heads saved by `heads.save_heads` in the folder ``heads``,
        attached to the target's embedding and LM head, as (drafter, params).
    """
    kind = normalize_kind(kind)
    model, params = target
    if kind == "model":
        if draft is None:
            raise ValueError("drafter kind 'model' needs draft=(Model, params)")
        return draft
    if kind == "ngram":
        from specjax.drafters.ngram import NgramDrafter

        return NgramDrafter(int(max_n), int(min_n))
    if kind == "early_exit":
        from specjax.drafters.early_exit import early_exit_drafter

        layer = int(exit_layer) or default_exit_layer(model.config.num_layers)
        return early_exit_drafter(model, params, layer)
    from specjax.drafters.heads import load_heads

    if not heads:
        raise ValueError(f"drafter kind {kind!r} needs heads=<folder of saved {kind} heads>")
    drafter = load_heads(heads, model, params)
    if drafter[0].kind != kind:
        raise ValueError(f"{heads} holds {drafter[0].kind} heads, not {kind}")
    return drafter

"""Where one speculative iteration's time goes: drafting, the verification call, the rest.

Dimension legend: B batch, P prompt tokens, K draft length (a tree's depth), N tree nodes,
C timed calls.

`iteration_parts` builds a loop's first state (the target's prefill, the drafter's init, as
`speculative.start` does) and times three jitted programs, each running C iterations in one
`lax.fori_loop` on the device, so no per-call dispatch is in the figures (C is a traced
argument: a static trip count lets XLA unroll the loop, which took minutes to compile):

  * draft: the drafter's `propose` (chain: K tokens) or `propose_tree` (a tree of N nodes),
    its state threaded from call to call;
  * draft + verify: the same, then the target's verification call over the newest token and
    the K drafts (N nodes under the tree's ancestor mask), its cache rolled back after each
    call, as `commit` does;
  * iteration: the loop's own body (`speculative.speculative_step` / `tree.tree_step`),
    which adds acceptance and `commit` (compaction, statistics, append, rollback).

Each part's cost is a difference: verify = (draft + verify) - draft, accept + commit =
iteration - (draft + verify). All calls see the same context length P (the draft and verify
programs do not advance the state; the iteration program advances it by what it accepts,
about one token a call with synthetic weights), so the figures are per call at context P.

The iteration program advances the state greedily: with synthetic weights it accepts about
nothing, so its rows grow one token a call and never stop within C calls (the budget is set
past C). What a call costs does not depend on what it accepts: shapes are fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax import cache as kv_cache
from specjax.decoding import speculative
from specjax.decoding import tree as tree_lib
from specjax.decoding.drafter import Drafter, decode_layout, target_for
from specjax.decoding.sampling import GREEDY
from specjax.decoding.state import DecodeState
from specjax.eval.timing import timed
from specjax.models.transformer import Model, Params


@dataclasses.dataclass(frozen=True)
class CallShape:
    """What one iteration drafts: a chain of `gamma` tokens, or `tree` (then gamma is unused).

    Fields:
      gamma: K, draft tokens of a chain.
      tree: a `TreeSpec` / `DynamicTreeSpec` / `LookupTreeSpec`, or None for a chain.
    """

    gamma: int = 4
    tree: tree_lib.AnyTreeSpec | None = None

    @property
    def depth(self) -> int:
        return self.tree.depth if self.tree is not None else self.gamma

    @property
    def verified_tokens(self) -> int:
        """Tokens of one verification call: the newest committed token and the drafts."""
        return (self.tree.num_nodes if self.tree is not None else self.gamma) + 1

    @property
    def draft_scratch(self) -> int:
        return self.tree.draft_scratch if self.tree is not None else 0


def start_state(
    target: Model, params: Params, drafter: Drafter, drafter_params: Any, shape: CallShape,
    *, batch: int, context: int, max_new_tokens: int,
) -> tuple[DecodeState, int]:  # fmt: skip
    """(the state of a loop over a P-token prompt of ones after its first call's drafting,
    its cache size). The target runs as the loop runs it for `drafter` (`target_for`: with an
    EAGLE-3 head's feature layers)."""
    target = target_for(drafter, target)
    cache_size = context + max_new_tokens + shape.verified_tokens + 1
    prompt_BxP = jnp.ones((batch, context), jnp.int32)
    start = jax.jit(
        functools.partial(
            speculative.start, target, gamma=shape.depth, max_new_tokens=max_new_tokens,
            cache_size=cache_size, drafter_max_len=cache_size + shape.draft_scratch,
            slots_needed=shape.verified_tokens,
        ),
        static_argnums=1,
    )  # fmt: skip
    state = start(
        params, drafter, drafter_params, prompt_BxP, jnp.full((batch,), context, jnp.int32),
        GREEDY, jnp.zeros((0,), jnp.int32), jax.random.key(0),
    )  # fmt: skip
    # The loop's first call catches the drafter up on the whole prompt (EAGLE's S-wide
    # re-feed, once per generation); later calls re-feed only what was verified since. One
    # proposal here makes every timed call a later call: otherwise each program's first call
    # paid the prompt-wide pass, 1/C of it in every per-call figure.
    first_drafting = jax.jit(lambda weights, state: _draft(drafter, weights, state, shape)[1])
    drafter_state = first_drafting(drafter_params, state)
    return dataclasses.replace(state, drafter_state=drafter_state), cache_size


def _draft(drafter: Drafter, drafter_params, state: DecodeState, shape: CallShape):
    """(draft tokens [B, K] or a DraftTree, the drafter's new state)."""
    rng = jax.random.fold_in(state.rng, jnp.sum(state.seq_lengths))
    if shape.tree is not None:
        return drafter.propose_tree(
            drafter_params, state.drafter_state, state.context, shape.tree, GREEDY, rng
        )
    tokens_BxK, _, drafter_state = drafter.propose(
        drafter_params, state.drafter_state, state.context, shape.gamma, GREEDY, rng
    )
    return tokens_BxK, drafter_state


def _verify(target: Model, params: Params, state: DecodeState, drafted, shape: CallShape):
    """The loop's own verification call: logits [B, M, V] and cache (M = K + 1 or N + 1)."""
    if shape.tree is not None:
        logits, _, cache = tree_lib.target_pass(target, params, state, drafted)
    else:
        logits, _, cache = speculative.target_pass(target, params, state, drafted)
    return logits, cache


def _token_sum(drafted) -> jax.Array:
    """A scalar that depends on every drafted token (keeps the draft from being dead code)."""
    tokens = drafted.tokens if isinstance(drafted, tree_lib.DraftTree) else drafted
    return jnp.sum(tokens)


def part_programs(
    target: Model, params: Params, drafter: Drafter, drafter_params: Any, shape: CallShape,
    max_new_tokens: int,
) -> dict[str, Callable[..., Any]]:  # fmt: skip
    """name -> jitted (params, drafter_params, state, calls: int32 scalar) -> a scalar, running
    `calls` iterations of that part. The weights are arguments: closed over, they would be
    compiled in as constants (3.3 GB at the 1.5B shape, minutes per compile). The target runs
    as `specjax.generate` runs it for `drafter` (`target_for`)."""
    target = target_for(drafter, target)

    def draft_only(params, drafter_params, state: DecodeState, calls: jax.Array):
        def body(_, carry):
            drafter_state, total = carry
            drafted, drafter_state = _draft(
                drafter, drafter_params, dataclasses.replace(state, drafter_state=drafter_state),
                shape,
            )  # fmt: skip
            return drafter_state, total + _token_sum(drafted)

        return jax.lax.fori_loop(0, calls, body, (state.drafter_state, jnp.int32(0)))[1]

    def draft_verify(params, drafter_params, state: DecodeState, calls: jax.Array):
        def body(_, carry):
            drafter_state, target_cache, total = carry
            now = dataclasses.replace(state, drafter_state=drafter_state, target_cache=target_cache)
            drafted, drafter_state = _draft(drafter, drafter_params, now, shape)
            logits, target_cache = _verify(target, params, now, drafted, shape)
            target_cache = kv_cache.rollback(target_cache, state.target_cache.lengths)
            total = total + _token_sum(drafted) + jnp.argmax(logits[:, -1], axis=-1).sum()
            return drafter_state, target_cache, total

        carry = (state.drafter_state, state.target_cache, jnp.int32(0))
        return jax.lax.fori_loop(0, calls, body, carry)[2]

    def iteration(params, drafter_params, state: DecodeState, calls: jax.Array):
        eos_ids_E = jnp.zeros((0,), jnp.int32)
        if shape.tree is not None:
            step = functools.partial(
                tree_lib.tree_step, target, params, drafter, drafter_params, sampling=GREEDY,
                eos_ids_E=eos_ids_E, tree=shape.tree, max_new_tokens=max_new_tokens,
            )  # fmt: skip
        else:
            step = functools.partial(
                speculative.speculative_step, target, params, drafter, drafter_params,
                sampling=GREEDY, eos_ids_E=eos_ids_E, gamma=shape.gamma,
                max_new_tokens=max_new_tokens, verify_fn=None,
            )  # fmt: skip
        final = jax.lax.fori_loop(0, calls, lambda _, s: step(state=s), state)
        return jnp.sum(final.seq_lengths)

    return {
        name: jax.jit(fn)
        for name, fn in (("draft", draft_only), ("draft_verify", draft_verify),
                         ("iteration", iteration))
    }  # fmt: skip


def iteration_parts(
    target: Model,
    params: Params,
    drafter: Drafter,
    drafter_params: Any,
    *,
    batch: int,
    context: int,
    shape: CallShape,
    calls: int = 32,
    repeats: int = 5,
) -> dict[str, Any]:
    """ms per call of each part (see the module docstring), medians over `repeats` timed runs
    of `calls` calls after a compiling one. Returns a dict: `draft_ms`, `draft_verify_ms`,
    `iteration_ms`, `verify_ms`, `accept_commit_ms`, `verified_tokens`, `calls`,
    `compile_s` (per program)."""
    if calls < 1 or repeats < 1:
        raise ValueError(f"calls and repeats must be >= 1, got {calls}, {repeats}")
    # Timed as `specjax.generate` drafts: in the decode layout. In the storage layout every
    # head call of the programs re-concatenated its q/k/v and gate/up weights; the twelfth and
    # thirteenth sessions' H200 splits were timed so (the chain's drafting read 0.82 ms a call
    # at the Qwen shape against a whole loop call of 2.18 ms) and are not re-measured yet.
    drafter_params = decode_layout(drafter, drafter_params, params)
    max_new_tokens = calls * (shape.depth + 1) + 1  # no row stops within the timed calls
    state, _ = start_state(
        target, params, drafter, drafter_params, shape, batch=batch, context=context,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    result: dict[str, Any] = {
        "verified_tokens": shape.verified_tokens, "calls": calls, "compile_s": {},
    }  # fmt: skip
    for name, program in part_programs(
        target, params, drafter, drafter_params, shape, max_new_tokens
    ).items():
        _, timing = timed(program, params, drafter_params, state, jnp.int32(calls), repeats=repeats)
        result["compile_s"][name] = timing.first_s  # the first call: compile and one run
        result[f"{name}_ms"] = 1e3 * timing.median_s / calls
    result["verify_ms"] = result["draft_verify_ms"] - result["draft_ms"]
    result["accept_commit_ms"] = result["iteration_ms"] - result["draft_verify_ms"]
    return result


def parse_shapes(texts: list[str], gamma: int) -> list[CallShape]:
    """'chain' (gamma drafts) or a tree string per entry (`tree.parse_tree_spec`)."""
    return [
        CallShape(gamma=gamma) if t.strip() == "chain" else
        CallShape(gamma=gamma, tree=tree_lib.parse_tree_spec(t))
        for t in texts
    ]  # fmt: skip


def shape_name(shape: CallShape) -> str:
    tree = shape.tree
    if tree is None:
        return f"chain, gamma {shape.gamma}"
    if isinstance(tree, tree_lib.LookupTreeSpec):
        return f"{shape_name(CallShape(gamma=shape.gamma, tree=tree.tree))} + lookup {tree.lookup}"
    if isinstance(tree, tree_lib.TreeSpec):
        return "static " + ",".join(map(str, tree.branching))
    return f"dynamic depth {tree.depth}, top-k {tree.top_k}, {tree.num_nodes} nodes"


def rows(
    target: Model, params: Params, drafter: Drafter, drafter_params: Any,
    shapes: list[CallShape], *, batch: int, context: int, calls: int, repeats: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:  # fmt: skip
    """`iteration_parts` of each shape, one row each (`name` added)."""
    out = []
    for shape in shapes:
        row = {"name": shape_name(shape)} | iteration_parts(
            target, params, drafter, drafter_params, batch=batch, context=context, shape=shape,
            calls=calls, repeats=repeats,
        )  # fmt: skip
        log(
            f"{row['name']}: draft {row['draft_ms']:.3f} + verify {row['verify_ms']:.3f} + "
            f"accept/commit {row['accept_commit_ms']:.3f} = {row['iteration_ms']:.3f} ms per call"
        )
        out.append(row)
    return out


def markdown(table_rows: list[dict[str, Any]]) -> str:
    from specjax import tables

    columns = ("drafts", "verified tokens", "draft ms", "verify ms", "accept + commit ms",
               "iteration ms", "replayed τ", "projected ms/token", "projected speedup")  # fmt: skip
    body = (
        (r["name"], r["verified_tokens"], r["draft_ms"], r["verify_ms"], r["accept_commit_ms"],
         r["iteration_ms"], r.get("replayed_tau", "–"), r.get("projected_ms_per_token", "–"),
         r.get("projected_speedup", "–"))
        for r in table_rows
    )  # fmt: skip
    return tables.markdown(columns, body, lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))


def replayed_tau(spec: str) -> tuple[float, str]:
    """(τ, source) of 'BENCH.json#NAME': acceptance τ (accepted drafts + 1 per call) of a bench
    row's pooled greedy batch-1 histogram (`parallel.accept_histogram_from_bench_row`)."""
    from pathlib import Path

    from specjax.bench.parallel import accept_histogram_from_bench_row

    path, sep, name = spec.rpartition("#")
    if not sep or not path or not name:
        raise ValueError(f"expected BENCH.json#ROW_NAME, got {spec!r}")
    acceptance = accept_histogram_from_bench_row(Path(path), name)
    probs = np.asarray(acceptance.probs)
    return 1.0 + float(np.sum(np.arange(len(probs)) * probs)), acceptance.source


def project(row: dict[str, Any], tau: float, source: str, step_ms: float) -> dict[str, Any]:
    """A row's projection at a replayed τ: ms/token = ms per call / τ, and its speedup over
    an autoregressive step of `step_ms` (both device loops; labelled a projection)."""
    per_token = row["iteration_ms"] / tau
    return row | {
        "replayed_tau": tau, "tau_source": source, "projected_ms_per_token": per_token,
        "ar_step_ms": step_ms, "projected_speedup": step_ms / per_token,
    }  # fmt: skip

"""Which generated tokens were accepted drafts and which the target itself produced.

Every verification call emits the draft tokens the target accepted and then one token of the
target's own: the correction at the first rejection, or the bonus after a full acceptance.
The first generated token comes from the prefill, so it is the target's too. Labels:

* ``ACCEPTED``: a draft token the target verified;
* ``TARGET``: a correction, bonus or prefill token (sampled or argmax'd from the target).

Three ways to get them from a finished generation, best first:

* ``GenerateOutput.from_draft`` (bool per generated token), which the compiled loop records:
  exact for any drafter and any sampling;
* from the accepted length of every call, :func:`sources_from_accept_lengths`;
* by replaying a greedy generation with its draft model, :func:`replay_greedy`: under greedy
  decoding a draft proposal matters only up to its first mismatch, and up to there the draft's
  context equals the emitted sequence. So the draft's proposal at generated index i is its
  argmax given prompt + generated[:i], and ONE teacher-forced forward pass of the draft model
  over prompt + output gives every call's accepted length. It needs nothing from the loop, so
  it is an independent check of the loop's own record (the tests and the quickstart notebook
  compare the two).

Dimension legend: P prompt length, N generated tokens, T = P + N, V vocab, K gamma.
"""

from __future__ import annotations

import dataclasses
import functools
import html
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ACCEPTED",
    "TARGET",
    "TokenSources",
    "accept_lengths_from_labels",
    "replay_greedy",
    "sources_from_accept_lengths",
    "to_html",
    "token_sources",
]

ACCEPTED = "accepted"
TARGET = "target"


def sources_from_accept_lengths(accept_lengths: Sequence[int], num_generated: int) -> list[str]:
    """Labels of ``num_generated`` tokens given each verification call's accepted length.

    Entries < 0 (padding of a per-step buffer) are skipped. The last call may be cut by the
    token budget or an EOS: labels stop at ``num_generated``.
    """
    labels = [TARGET]  # the prefill's token
    for k in accept_lengths:
        if k < 0:
            continue
        labels += [ACCEPTED] * int(k) + [TARGET]
    return labels[:num_generated]


def accept_lengths_from_labels(labels: Sequence[str]) -> list[int]:
    """Accepted drafts of every verification call, read back from per-token labels.

    Every call ends with one TARGET token, except a last call cut short by the budget or an
    EOS right after accepted drafts (counted as a call too). Index 0 is the prefill's token.
    """
    calls, run = [], 0
    for label in labels[1:]:
        if label == ACCEPTED:
            run += 1
        else:
            calls.append(run)
            run = 0
    if run:
        calls.append(run)
    return calls


def _draft_argmax(draft: tuple[Any, Any], sequence_T: np.ndarray) -> np.ndarray:
    """argmax of the draft's next-token logits after every prefix of ``sequence_T`` ([T])."""
    model, params = draft
    T = int(sequence_T.shape[0])
    # Pad to a multiple of 64 so rows of similar length share one compilation; causal
    # attention keeps the padding from touching the logits of the real positions.
    W = -(-T // 64) * 64
    cache = model.init_cache(1, W, dtype=jax.tree.leaves(params)[0].dtype)
    tokens_1xW = jnp.zeros((1, W), jnp.int32).at[0, :T].set(jnp.asarray(sequence_T, jnp.int32))
    positions_1xW = jnp.arange(W, dtype=jnp.int32)[None, :]
    logits_1xWxV, _, _ = _forward(model)(params, tokens_1xW, positions_1xW, cache)
    return np.asarray(jnp.argmax(logits_1xWxV[0, :T], axis=-1))


@functools.lru_cache(maxsize=4)
def _forward(model: Any) -> Any:
    return jax.jit(model.forward)


def replay_greedy(
    draft: tuple[Any, Any], prompt_ids: Sequence[int], generated: Sequence[int], gamma: int
) -> list[int]:
    """Accepted length of every verification call of a GREEDY speculative generation.

    ``draft`` is the draft model as a (Model, params) pair, ``generated`` the emitted tokens
    of one row. Exact when the draft's teacher-forced argmax equals its step-by-step argmax
    (design bar 1; a near-tie in low precision could flip one).
    """
    prompt = np.asarray(prompt_ids, np.int64).ravel()
    gen = np.asarray(generated, np.int64).ravel()
    P, N = prompt.size, gen.size
    if N <= 1:
        return []
    # predicted_N[i]: the draft's proposal for generated index i (from the prefix before it).
    argmax_T = _draft_argmax(draft, np.concatenate([prompt, gen]))
    predicted_N = np.concatenate([[-1], argmax_T[P : P + N - 1]])
    calls, i = [], 1  # index 0 came from the prefill
    while i < N:
        k = 0
        while k < gamma and i + k < N and predicted_N[i + k] == gen[i + k]:
            k += 1
        calls.append(k)
        i += k + 1  # k accepted drafts, then the target's token
    return calls


@dataclasses.dataclass
class TokenSources:
    """Provenance of one row's generated tokens.

    Fields:
      tokens: the generated ids.
      labels: ACCEPTED or TARGET per token.
      accept_lengths: accepted drafts per verification call.
      consistent: the replay agrees with the loop's counters (None: nothing to check).
      method: "from_draft", "accept_lengths" or "greedy-replay".
    """

    tokens: list[int]
    labels: list[str]
    accept_lengths: list[int]
    consistent: bool | None
    method: str

    @property
    def num_accepted(self) -> int:
        return self.labels.count(ACCEPTED)

    @property
    def num_target(self) -> int:
        return self.labels.count(TARGET)


def token_sources(
    output: Any,
    row: int = 0,
    *,
    gamma: int,
    prompt_ids: Sequence[int] | None = None,
    draft: tuple[Any, Any] | None = None,
    replay: bool = False,
) -> TokenSources:
    """Label the tokens of ``output`` (a GenerateOutput) row ``row``.

    Uses the loop's record (``output.from_draft``, or per-call ``stats.accept_lengths``) when
    there is one; otherwise replays with ``draft`` ((Model, params)) and ``prompt_ids``
    (valid for greedy generations only). ``replay=True`` forces the replay (a cross-check).
    """
    tokens = output.token_lists()[row]
    recorded = None if replay else getattr(output, "from_draft", None)
    if recorded is not None:
        flags = np.asarray(recorded)[row, : len(tokens)]
        labels = [ACCEPTED if f else TARGET for f in flags]
        return TokenSources(tokens, labels, accept_lengths_from_labels(labels), None, "from_draft")
    per_call = None if replay else getattr(output.stats, "accept_lengths", None)
    if per_call is not None:
        lengths = [int(k) for k in np.asarray(per_call)[row] if k >= 0]
        return TokenSources(
            tokens,
            sources_from_accept_lengths(lengths, len(tokens)),
            lengths,
            None,
            "accept_lengths",
        )
    if draft is None or prompt_ids is None:
        raise ValueError(
            "this output has no per-call accept_lengths: pass draft=(Model, params) and "
            "prompt_ids to replay a greedy generation"
        )
    lengths = replay_greedy(draft, prompt_ids, tokens, gamma)
    calls = int(np.asarray(output.stats.verify_calls)[row])
    accepted = int(np.asarray(output.stats.accepted)[row])
    # The loop counts every accepted draft, even those a budget or EOS then cut off, so the
    # emitted ones may fall short of its total only in the last call.
    last = lengths[-1] if lengths else 0
    consistent = len(lengths) == calls and sum(lengths) <= accepted <= sum(lengths) - last + gamma
    labels = sources_from_accept_lengths(lengths, len(tokens))
    return TokenSources(tokens, labels, lengths, consistent, "greedy-replay")


_STYLE = {
    ACCEPTED: "background:#c8f7c5;color:#114411",
    TARGET: "background:#ffd9b3;color:#5a2d00",
}


def _pieces(tokenizer: Any | None, tokens: Sequence[int]) -> list[str]:
    """Display text per token; a multi-byte character shows on the token that completes it."""
    if tokenizer is None:
        return [f"[{t}]" for t in tokens]
    if hasattr(tokenizer, "stream_decoder"):
        stream = tokenizer.stream_decoder()
        pieces = [stream.push(int(t)) for t in tokens]
        if pieces:
            pieces[-1] += stream.flush()
        return pieces
    return [tokenizer.decode([int(t)]) for t in tokens]


def to_html(sources: TokenSources, tokenizer: Any | None = None, *, legend: bool = True) -> str:
    """The generation as HTML, accepted drafts green and target tokens orange (hover: id)."""
    spans = []
    for token, label, text in zip(
        sources.tokens, sources.labels, _pieces(tokenizer, sources.tokens), strict=True
    ):
        shown = html.escape(text) if text else "&#8203;"
        spans.append(f'<span style="{_STYLE[label]}" title="{label} token {token}">{shown}</span>')
    body = (
        '<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">'
        + "".join(spans)
        + "</div>"
    )
    if not legend:
        return body
    n, a = len(sources.tokens), sources.num_accepted
    head = (
        f'<div><span style="{_STYLE[ACCEPTED]}">accepted draft</span> '
        f'<span style="{_STYLE[TARGET]}">target (correction / bonus / prefill)</span> '
        f"&mdash; {a} of {n} tokens accepted from the draft, "
        f"{len(sources.accept_lengths)} verification calls</div>"
    )
    return head + body

"""Accepted vs target tokens: hand-made cases, and a greedy replay checked against the loop."""

from __future__ import annotations

import specjax
from specjax import experiment
from specjax.eval import provenance
from specjax.eval.provenance import ACCEPTED as A
from specjax.eval.provenance import TARGET as T
from specjax.experiment import pairs


def test_sources_from_accept_lengths():
    # prefill token, then calls accepting 2, 0 and 3 (gamma 3) drafts.
    assert provenance.sources_from_accept_lengths([2, 0, 3], 9) == [T, A, A, T, T, A, A, A, T]
    # A budget cut inside the last call; -1 pads a per-step buffer.
    assert provenance.sources_from_accept_lengths([2, -1, 3, -1], 6) == [T, A, A, T, A, A]
    assert provenance.sources_from_accept_lengths([], 1) == [T]
    # And back: per-call lengths from labels (a cut last call counts).
    assert provenance.accept_lengths_from_labels([T, A, A, T, T, A, A, A, T]) == [2, 0, 3]
    assert provenance.accept_lengths_from_labels([T, A, A, T, A, A]) == [2, 2]


def test_greedy_replay_matches_the_loop(tiny_sweep, config_module):
    # Same config and shapes as the sweep's gamma=3 point: reuses its compilation.
    config = config_module("tiny").get_config("gamma=3")
    pair = pairs.load_pair(config)
    prompts = experiment.encode_prompts(config, pair)[:2]
    ids = [list(p.ids) for p in prompts]
    out = specjax.generate(pair.target.pair, pair.drafter, ids, gamma=3, max_new_tokens=16)
    for row in range(2):
        loop = provenance.token_sources(out, row, gamma=3)  # the loop's own record
        replayed = provenance.token_sources(
            out, row, gamma=3, prompt_ids=ids[row], draft=pair.draft.pair, replay=True
        )
        assert loop.method == "from_draft" and replayed.method == "greedy-replay"
        assert replayed.consistent  # with the per-row counters
        assert replayed.labels == loop.labels  # token for token, independently derived
        assert replayed.accept_lengths == loop.accept_lengths
        assert len(loop.labels) == 16 and loop.labels[0] == T
        assert len(loop.accept_lengths) == int(out.stats.verify_calls[row])
        assert 0 < loop.num_accepted <= int(out.stats.accepted[row])
        html = provenance.to_html(loop, tokenizer=None)
        assert html.count("<span") == 16 + 2  # tokens + the two legend swatches
        assert f"{loop.num_accepted} of 16 tokens accepted" in html

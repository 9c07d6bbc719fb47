"""Accepted vs target tokens: hand-made cases, and a greedy replay checked against the loop."""

from __future__ import annotations

import specjax
from specjax.eval import models, provenance, runner
from specjax.eval.provenance import ACCEPTED as A
from specjax.eval.provenance import TARGET as T


def test_sources_from_accept_lengths():
    # prefill token, then calls accepting 2, 0 and 3 (gamma 3) drafts.
    assert provenance.sources_from_accept_lengths([2, 0, 3], 9) == [T, A, A, T, T, A, A, A, T]
    # A budget cut inside the last call; -1 pads a per-step buffer.
    assert provenance.sources_from_accept_lengths([2, -1, 3, -1], 6) == [T, A, A, T, A, A]
    assert provenance.sources_from_accept_lengths([], 1) == [T]


def test_greedy_replay_matches_the_loop(tiny_sweep, config_module):
    # Same config and shapes as the sweep's gamma=3 point: reuses its compilation.
    config = config_module("tiny").get_config("gamma=3")
    pair = models.load_pair(config)
    prompts = runner.encode_prompts(config, pair)[:2]
    ids = [list(p.ids) for p in prompts]
    out = specjax.generate(pair.target.pair, pair.drafter, ids, gamma=3, max_new_tokens=16)
    for row in range(2):
        src = provenance.token_sources(
            out, row, gamma=3, prompt_ids=ids[row], draft=pair.draft.pair
        )
        assert src.method == "greedy-replay" and src.consistent
        assert len(src.labels) == 16 and src.labels[0] == T
        assert len(src.accept_lengths) == int(out.stats.verify_calls[row])
        assert 0 < src.num_accepted <= int(out.stats.accepted[row])
        html = provenance.to_html(src, tokenizer=None)
        assert html.count("<span") == 16 + 2  # tokens + the two legend swatches
        assert f"{src.num_accepted} of 16 tokens accepted" in html

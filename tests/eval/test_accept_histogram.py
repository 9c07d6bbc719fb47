"""The accepted-length histogram read back from a runner's generations.jsonl, checked against
hand-counted strings and against a real speculative run's `from_draft` and stats."""

import json

import numpy as np
import pytest

from specjax.bench.speedup import (
    accept_histogram_from_generations,
    accept_runs,
    forced_acceptance,
)


@pytest.mark.parametrize(
    "from_draft, runs, dropped",
    [
        ("", [], 0),
        ("0", [], 0),  # only the prefill's token
        ("00", [0], 0),  # one call, nothing accepted
        ("0" + "1110" + "10" + "0", [3, 1, 0], 0),
        ("0" + "11110" + "0" + "11", [4, 0], 1),  # budget cut inside the third call
        ("0" + "1111", [], 1),
        ("0" + "11110" * 3, [4, 4, 4], 0),
    ],
)
def test_accept_runs(from_draft, runs, dropped):
    assert accept_runs(from_draft, gamma=4) == (runs, dropped)


@pytest.mark.parametrize(
    "from_draft, message",
    [
        ("0" + "111110", "run of 5 accepted draft tokens is longer than gamma=4"),
        ("0" + "0" + "11111", "run of 5"),  # an unterminated run cannot exceed gamma either
        ("10", "must start with '0'"),
        ("0102", "only '0' and '1'"),
    ],
)
def test_accept_runs_errors(from_draft, message):
    with pytest.raises(ValueError, match=message):
        accept_runs(from_draft, gamma=4)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_histogram_from_generations(tmp_path):
    rows = [
        dict(id="a", from_draft="0" + "1110" + "0" + "10", verify_calls=3),
        dict(id="b", from_draft="0" + "0" + "0" + "111", verify_calls=3),  # trailing run dropped
        dict(id="c", from_draft="0" + "11110", verify_calls=1),
    ]
    counts = accept_histogram_from_generations(_write(tmp_path / "g.jsonl", rows), gamma=4)
    np.testing.assert_array_equal(counts, [3, 1, 0, 1, 1])


def test_histogram_errors(tmp_path):
    with pytest.raises(ValueError, match="longer than gamma=2"):
        accept_histogram_from_generations(
            _write(tmp_path / "long.jsonl", [dict(id="a", from_draft="01110")]), gamma=2
        )
    with pytest.raises(ValueError, match="no 'from_draft'"):
        accept_histogram_from_generations(
            _write(tmp_path / "ar.jsonl", [dict(id="a", tokens=[1, 2])]), gamma=2
        )
    with pytest.raises(ValueError, match="records verify_calls=5"):
        accept_histogram_from_generations(
            _write(tmp_path / "calls.jsonl", [dict(id="a", from_draft="0100", verify_calls=5)]),
            gamma=2,
        )


def test_histogram_matches_a_real_run(tmp_path):
    """The parse agrees with the decoder's own statistics (accepted tokens, verify calls)."""
    import specjax
    from specjax.bench.steps import synthetic_model
    from specjax.models.config import ModelConfig

    config = ModelConfig(
        vocab_size=64, num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, head_dim=8,
        ffn_dim=32,
    )  # fmt: skip
    target = synthetic_model(config, seed=0)
    draft = synthetic_model(config.replace(ffn_dim=16), seed=1)
    # A sampling run with an acceptance forced i.i.d.: every n in 0..gamma occurs.
    verify = forced_acceptance([0.3, 0.2, 0.2, 0.3])
    out = specjax.generate(
        target, draft, [[1, 2, 3], [4, 5]], sampling=specjax.Sampling.create(1.0), gamma=3,
        max_new_tokens=40, verify_fn=verify, seed=3,
    )  # fmt: skip
    flags = np.asarray(out.from_draft)
    rows = [
        dict(
            id=b,
            from_draft="".join("1" if f else "0" for f in flags[b, : int(out.num_generated[b])]),
            verify_calls=int(out.stats.verify_calls[b]),
        )
        for b in range(2)
    ]
    counts = accept_histogram_from_generations(_write(tmp_path / "g.jsonl", rows), gamma=3)
    dropped = sum(accept_runs(r["from_draft"], 3)[1] for r in rows)
    assert counts.sum() + dropped == int(np.sum(out.stats.verify_calls))
    accepted_in_complete = int((counts * np.arange(4)).sum())
    assert accepted_in_complete <= int(np.sum(out.stats.accepted))
    assert int(np.sum(out.stats.accepted)) - accepted_in_complete <= 3 * dropped

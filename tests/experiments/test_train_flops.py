"""training.diagnostics.step_cost (experiments/train_flops.py): XLA's cost analysis of a
head-training step. Training over a draft vocabulary must take the LM head's FLOPs down with
it (the compiled step scores the Vd columns only, not all V then a slice)."""

from specjax.training import diagnostics


def test_a_draft_vocabulary_cuts_the_lm_head_flops():
    common = dict(kind="eagle", shape="smollm2-135m", batch=2, positions=32, new_tokens=16,
                  unroll_steps=1)  # fmt: skip
    full = diagnostics.step_cost(train_vocab=0, **common)
    small = diagnostics.step_cost(train_vocab=4096, **common)
    # SmolLM2: V = 49,152, D = 576. Scoring 2 x 16 positions over V costs (teacher, drafter
    # forward, drafter backward) ~3 x 2 V D FLOPs each; over 4,096 tokens 12x fewer. The
    # head's own layer is the same in both.
    lm_head_flops = 3 * 2 * 49152 * 576 * 2 * 16
    assert full["flops"] - small["flops"] > 0.8 * lm_head_flops * (1 - 4096 / 49152)
    assert small["bytes"] < full["bytes"]

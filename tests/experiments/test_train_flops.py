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


def test_online_features_add_one_target_forward_without_its_logits():
    """data.features=online: the step runs the target over its batch. XLA's count grows by
    about that forward (2 FLOPs per layer weight per token) and not by its [B, T, V] logits,
    which only `hidden` feeds (dropped as unused)."""
    from specjax.models.config import KNOWN_SHAPES

    common = dict(kind="eagle", shape="smollm2-135m", batch=2, positions=32, new_tokens=16,
                  unroll_steps=1, train_vocab=0)  # fmt: skip
    stored = diagnostics.step_cost(**common)
    online = diagnostics.step_cost(features="online", **common)
    c = KNOWN_SHAPES["smollm2-135m"]
    per_layer = c.d_model * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per_layer += c.num_heads * c.head_dim * c.d_model + 3 * c.d_model * c.ffn_dim
    tokens = 2 * 32
    layers_flops = 2 * per_layer * c.num_layers * tokens
    logits_flops = 2 * c.vocab_size * c.d_model * tokens
    extra = online["flops"] - stored["flops"]
    assert 0.8 * layers_flops < extra < layers_flops + 0.5 * logits_flops

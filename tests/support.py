"""Shared test helpers: tiny model configs of every family and random models.

A plain module (imported as `support`), not conftest.py: several conftest.py files in one
run shadow each other under the module name "conftest".
"""

import jax

from specjax.models.config import ModelConfig
from specjax.models.transformer import Model

# One compiled program per (model, shapes); the model is hashable, hence static. Shared, so
# that tests of one worker reuse each other's programs.
jit_forward = jax.jit(Model.forward, static_argnums=0)

TINY_LLAMA = ModelConfig(
    family="llama",
    vocab_size=64,
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    ffn_dim=64,
)
TINY_QWEN2 = ModelConfig(
    family="qwen2",
    vocab_size=64,
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=1,
    head_dim=8,
    ffn_dim=64,
    qkv_bias=True,
    tie_embeddings=False,
    rope_theta=1e6,
)
TINY_GEMMA3 = ModelConfig(
    family="gemma3",
    vocab_size=64,
    num_layers=4,
    d_model=32,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    ffn_dim=64,
    qk_norm=True,
    post_norms=True,
    embed_scale=True,
    activation="gelu_tanh",
    sliding_window=4,
    sliding_window_pattern=2,
    rope_theta=1e6,
    rope_local_theta=1e4,
    query_pre_attn_scalar=12.0,
)
TINY_INTERLEAVED = TINY_LLAMA.replace(rope_layout="interleaved")

FAMILIES = {
    "llama": TINY_LLAMA,
    "qwen2": TINY_QWEN2,
    "gemma3": TINY_GEMMA3,
    "llama-interleaved": TINY_INTERLEAVED,
}


def random_model(config: ModelConfig, seed: int = 0, dtype=None):
    """(Model, params) with random weights drawn by numpy on the host (no per-shape jax.random
    compilations: seconds per model on 2 cores). Kernels and embeddings ~ N(0, 1/fan_in);
    norm scales ~ 1 + N(0, 0.2) and biases ~ N(0, 0.2), perturbed away from their 1/0
    initialisation so that tests notice a mishandled norm or bias."""
    import jax.numpy as jnp
    import numpy as np

    from specjax.models import abstract_model

    dtype = dtype or jnp.float32
    model, params = abstract_model(config, param_dtype=dtype)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = 1.0 + rng.normal(0.0, 0.2, leaf.shape)
        elif "bias" in name:
            value = rng.normal(0.0, 0.2, leaf.shape)
        else:
            fan_in = leaf.shape[-1] if "embedding" in name else leaf.shape[-2]
            value = rng.normal(0.0, fan_in**-0.5, leaf.shape)
        return jnp.asarray(value, dtype)

    params.replace_by_pure_dict(jax.tree_util.tree_map_with_path(draw, params.to_pure_dict()))
    return model, params


def eagle_echo(target, seed=2, noise=0.3, feature_layers=()):
    """An EAGLE head that mostly predicts 'the input token again', perturbed so that features
    and attention still change its drafts. Random tiny targets loop on a few tokens, so it is
    often right: full acceptances, partial ones and rejections all happen. `feature_layers`:
    an EAGLE-3 head (its random `fuse` layer feeds the perturbing half of fc)."""
    import jax.numpy as jnp
    import numpy as np

    from specjax.drafters import heads

    drafter, params = heads.init_eagle(*target, seed=seed, feature_layers=feature_layers)
    head = params["head"]
    D = target[0].config.d_model
    rng = np.random.default_rng(seed)
    kernel_2DxD = noise * rng.normal(0.0, (2 * D) ** -0.5, (2 * D, D))
    kernel_2DxD[D:] += np.eye(D)  # the embedding half passes through
    head["fc"]["kernel"] = jnp.asarray(kernel_2DxD, jnp.float32)
    head["fc"]["bias"] = jnp.zeros_like(head["fc"]["bias"])
    # Shrink the layer's output projections: the residual stream stays near the embedding.
    for name, group in (("o_proj", "attn"), ("down_proj", "mlp")):
        head["block"][group][name]["kernel"] = noise * head["block"][group][name]["kernel"]
    return drafter, params


def tiny_gguf_with_tokenizer(path, config: ModelConfig = TINY_LLAMA, seed: int = 0):
    """A GGUF file of a tiny random model with a byte-level BPE tokenizer embedded (every
    byte, one merge "h e", and an end-of-text token), so that the CLI and checkpoint loaders
    can run end to end on it in seconds. Returns the path."""
    from specjax.checkpoints.gguf import save_gguf
    from specjax.tokenizers.bpe import _gpt2_bytes_to_unicode

    tokens = [_gpt2_bytes_to_unicode()[b] for b in range(256)] + ["he", "<|endoftext|>"]
    config = config.replace(vocab_size=len(tokens))

    def add_tokenizer(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * 257 + [3])  # normal, ..., control
        writer.add_token_merges(["h e"])
        writer.add_eos_token_id(len(tokens) - 1)

    _, params = random_model(config, seed)
    return save_gguf(path, config, params, extra_metadata=add_tokenizer)


def notebook_text(cell) -> str:
    """Everything an executed notebook cell printed or displayed, as text (tests of
    notebooks/ assert on it)."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for mime in ("text/html", "text/markdown", "text/plain"):
            parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def tree_decoding_before_and_after(tree, patch):
    """Greedy EAGLE tree decoding (`eagle_echo` on a tiny target, two prompts, 16 tokens)
    once as is and once after `patch()` (which swaps an implementation, e.g. through
    monkeypatch) with JAX's caches cleared, so that the loop is traced again through what
    `patch` installed: (the first GenerateOutput, the second). Both accept drafts (tau > 1)
    when the patch changes nothing they compute."""
    import jax

    import specjax

    target = random_model(TINY_LLAMA, seed=5)
    head = eagle_echo(target)
    prompts = [[5, 17, 3, 42, 8], [9, 1]]
    kwargs = dict(gamma=3, max_new_tokens=16, tree=tree)
    before = specjax.generate(target, head, prompts, **kwargs)
    patch()
    jax.clear_caches()
    return before, specjax.generate(target, head, prompts, **kwargs)


def spy_prefill_widths(monkeypatch) -> list:
    """Wraps `sequence.prefill` so that each trace of it records the `widths` it was handed;
    returns that (growing) list. Loops are traced once per compilation, so the list has one
    entry per loop program compiled."""
    from specjax.decoding import sequence

    seen = []
    prefill = sequence.prefill

    def spy(*args, widths=None, **kwargs):
        seen.append(widths)
        return prefill(*args, widths=widths, **kwargs)

    monkeypatch.setattr(sequence, "prefill", spy)
    return seen


def reached_both_ways(stats):
    """(reached per position from the loop's rejection counts, reached as if every call had
    drafted its full depth: position i + 1 whenever i was accepted), pooled over rows, of a
    generation's `stats` (`DecodeStats`)."""
    import numpy as np

    from specjax.decoding import state

    counts = dict(
        accepted_per_position=np.asarray(stats.accepted_per_position),
        verify_calls=np.asarray(stats.verify_calls),
    )
    rejected = np.asarray(stats.rejected_per_position)
    return (
        state.reached_per_position(**counts, rejected_per_position=rejected),
        state.reached_per_position(**counts),
    )


def calls_rejected_or_full(stats):
    """Per row: calls that ended on a rejection plus calls that accepted every position; the
    verify calls exactly where every call drafted its full depth, at most that otherwise."""
    import numpy as np

    rejected = np.asarray(stats.rejected_per_position).sum(axis=1)
    return rejected + np.asarray(stats.accepted_per_position)[:, -1]

"""The decoder used for targets, drafts and self-drafts, and its pure `forward`.

Dimension legend: B batch, T new tokens, S cache slots, V vocab, D width, L layers.

Weights come in two layouts (see `layers.py`):
  * storage: the NNX `Transformer`, every block parameter stacked on a leading L axis.
    Checkpoints, training and the sharding rules use it.
  * decode: `DecodeParams`, one `LayerParams` tree per layer with fused q/k/v and gate/up
    projections, converted once by `to_decode_params` (`Model.decode_params`). A decode step
    then reads every weight in place: slicing layer l out of a stacked [L, ...] array inside
    the generation loop made XLA copy it first, which cost half the GPU time of a Llama-3-8B
    decode step (docs/benchmarks.md, "Decode at the memory floor").
`forward` is one implementation for both: given storage params it fuses them on the fly
inside the program (training, tests); `specjax.generate` converts once and decodes on the
decode layout.

Layers are applied by a Python loop: each layer's weights and KV cache are separate arrays,
so nothing is sliced or copied between layers. Compile time grows with depth.

Decoding code never touches the NNX module: `Model.split(module)` returns a hashable
`Model` (graph definition + config, a static jit argument) and the params pytree (a jit
argument), as Flax's own Gemma sampler does.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from specjax import cache as kv_cache
from specjax.models import layers
from specjax.models.config import ModelConfig
from specjax.models.layers import Block, LayerParams, RMSNorm

Params = Any  # storage layout (an nnx.State pytree) or DecodeParams


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeParams:
    """A whole model in the decode layout.

    Fields:
      embedding: [V, D] token embedding.
      layers: tuple of L `LayerParams`, one tree per layer.
      final_norm: [D].
      lm_head: [D, V], or None when the embedding is tied (the head is embedding.T).
    """

    embedding: jax.Array
    layers: tuple[LayerParams, ...]
    final_norm: jax.Array
    lm_head: jax.Array | None = None

    @property
    def shards(self) -> int:
        """Tensor-parallel blocks of the fused projections (1 on one device)."""
        return self.layers[0].shards


def _stacked_blocks(config: ModelConfig, rngs: nnx.Rngs, param_dtype) -> Block:
    """One Block whose parameters carry a leading layer axis L."""
    blocks = [Block(config, rngs=rngs, param_dtype=param_dtype) for _ in range(config.num_layers)]
    graphdef = nnx.graphdef(blocks[0])
    states = [nnx.state(block) for block in blocks]
    stacked = jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *states)
    return nnx.merge(graphdef, stacked)


class Transformer(nnx.Module):
    """Decoder-only transformer of any supported family (storage layout, see ModelConfig)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        D, V = config.d_model, config.vocab_size
        self.embedder = nnx.Embed(
            V,
            D,
            param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(stddev=D**-0.5),
            rngs=rngs,
        )
        self.blocks = _stacked_blocks(config, rngs, param_dtype)
        self.final_norm = RMSNorm(D, config.norm_eps, param_dtype)
        if not config.tie_embeddings:
            self.lm_head = nnx.Linear(
                D,
                V,
                use_bias=False,
                param_dtype=param_dtype,
                kernel_init=nnx.initializers.normal(stddev=D**-0.5),
                rngs=rngs,
            )

    def __call__(
        self,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: kv_cache.KVCache,
        extra_mask_BxTxT: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, kv_cache.KVCache]:
        """See `forward`."""
        params = to_decode_params(self.config, nnx.state(self, nnx.Param))
        return forward(self.config, params, tokens_BxT, positions_BxT, cache, extra_mask_BxTxT)


def to_decode_params(
    config: ModelConfig, params: Params, shards: int = 1, inference: bool = False
) -> DecodeParams:
    """Storage-layout params (nnx.State or its pure dict) -> DecodeParams.

    `shards` is the tensor-parallel degree the fused projections are laid out for (see
    `layers.LayerParams`). Pure jnp: inside jit the per-layer slices and concatenations are
    part of the program (training); `Model.decode_params` runs it once, on its own, with
    `inference` (decode-only layers: see `LayerParams.inference`).
    """
    if isinstance(params, DecodeParams):
        if params.shards != shards:
            raise ValueError(f"params are laid out for {params.shards} shards, not {shards}")
        return params
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    per_layer = [
        layers.fuse_block(jax.tree.map(lambda stacked, l=l: stacked[l], pure["blocks"]), config,
                          shards, inference)
        for l in range(config.num_layers)
    ]  # fmt: skip
    return DecodeParams(
        embedding=pure["embedder"]["embedding"],
        layers=tuple(per_layer),
        final_norm=pure["final_norm"]["scale"],
        lm_head=pure["lm_head"]["kernel"] if "lm_head" in pure else None,
    )


def forward(
    config: ModelConfig,
    params: DecodeParams,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: kv_cache.KVCache,
    extra_mask_BxTxT: jax.Array | None = None,
    feature_layers: tuple[int, ...] = (),
    logits: bool = True,
) -> tuple[jax.Array | None, jax.Array, kv_cache.KVCache]:
    """One forward pass over T new tokens per row (see `Model.forward`)."""
    cfg = config
    if len(params.layers) != cfg.num_layers or len(cache.k) != cfg.num_layers:
        raise ValueError(
            f"model has {cfg.num_layers} layers but got {len(params.layers)} layers of weights "
            f"and {len(cache.k)} of KV cache"
        )
    check_feature_layers(feature_layers, cfg.num_layers)
    x_BxTxD = jnp.take(params.embedding, tokens_BxT, axis=0)
    if cfg.embed_scale:
        # Gemma multiplies by sqrt(D) rounded to the activation dtype.
        x_BxTxD = x_BxTxD * jnp.asarray(cfg.d_model**0.5, x_BxTxD.dtype)

    lengths_B = cache.lengths
    windows, thetas = cfg.layer_windows(), cfg.layer_rope_thetas()
    # Masks and rotary angles depend on the layer only through its window and RoPE base:
    # computed once per distinct value (at most two), not once per layer.
    masks_BxTxS = {
        window: kv_cache.attention_mask(
            lengths_B, positions_BxT, cache.max_len, window, extra_mask_BxTxT
        )
        for window in set(windows)
    }
    rotaries = {
        theta: layers.Rotary.create(positions_BxT, theta, cfg.head_dim) for theta in set(thetas)
    }
    new_k, new_v, features = [], [], []
    for l, layer in enumerate(params.layers):
        with jax.named_scope(f"layer{l}"):
            x_BxTxD, k_BxSxCxDh, v_BxSxCxDh = layers.decoder_layer(
                layer, x_BxTxD, rotaries[thetas[l]], cache.k[l], cache.v[l], lengths_B,
                masks_BxTxS[windows[l]], cfg,
            )  # fmt: skip
        new_k.append(k_BxSxCxDh)
        new_v.append(v_BxSxCxDh)
        if l in feature_layers:
            # Unit-RMS without a scale: the residual stream's magnitude grows with depth, and
            # a drafter's input layer should see every layer at one scale.
            ones_D = jnp.ones((cfg.d_model,), x_BxTxD.dtype)
            features.append(layers.rms_norm(x_BxTxD, ones_D, cfg.norm_eps))

    hidden_BxTxD = layers.rms_norm(x_BxTxD, params.final_norm, cfg.norm_eps)
    logits_BxTxV = lm_head(cfg, params, hidden_BxTxD) if logits else None
    T = tokens_BxT.shape[1]
    new_cache = kv_cache.KVCache(k=tuple(new_k), v=tuple(new_v), lengths=lengths_B + T)
    if features:  # [B, T, (n + 1) D]: the listed layers in order, then the last hidden state
        hidden_BxTxD = jnp.concatenate([*features, hidden_BxTxD], axis=-1)
    return logits_BxTxV, hidden_BxTxD, new_cache


def lm_head(config: ModelConfig, params: DecodeParams, hidden_BxTxD: jax.Array) -> jax.Array:
    """float32 logits [B, T, V] of final-norm hidden states [B, T, D] (the LM head, tied or
    not, and Gemma's soft cap)."""
    if params.lm_head is None:  # tied: contract with the embedding's D axis, no transpose copy
        logits_BxTxV = jnp.einsum(
            "btd,vd->btv",
            hidden_BxTxD,
            params.embedding.astype(hidden_BxTxD.dtype),
            preferred_element_type=jnp.float32,
        )
    else:
        logits_BxTxV = jnp.einsum(
            "btd,dv->btv",
            hidden_BxTxD,
            params.lm_head.astype(hidden_BxTxD.dtype),
            preferred_element_type=jnp.float32,
        )
    if config.final_logit_softcap:
        cap = config.final_logit_softcap
        logits_BxTxV = jnp.tanh(logits_BxTxV / cap) * cap
    return logits_BxTxV


def hidden_width(config: ModelConfig, feature_layers: Sequence[int] = ()) -> int:
    """Width of `forward`'s hidden output: D, or (n + 1) D with n feature layers."""
    return (len(feature_layers) + 1) * config.d_model


def check_feature_layers(feature_layers: tuple[int, ...], num_layers: int) -> None:
    """Feature layers are distinct, increasing and inside [0, num_layers)."""
    ok = all(0 <= l < num_layers for l in feature_layers) and list(feature_layers) == sorted(
        set(feature_layers)
    )
    if not ok:
        raise ValueError(
            f"feature layers {feature_layers} must be distinct, increasing and in "
            f"[0, {num_layers}) for a {num_layers}-layer model"
        )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _decode_params_jit(config: ModelConfig, params: Params, shards: int) -> DecodeParams:
    return to_decode_params(config, params, shards, inference=True)


# Conversions done, keyed by (what, ids of the original leaves) and guarded by weak references
# to those leaves: converting the same weights again (every `specjax.generate` call, an
# early-exit drafter sharing the target's layers) reuses one converted copy, which dies with
# the originals.
_CONVERTED: dict[tuple, tuple[list[weakref.ref], Any]] = {}


def converted_once(what: Any, params: Any, convert) -> Any:
    """`convert(params)`, remembered per (`what`, params' leaves) while those leaves live.

    `what` (hashable) names the conversion, e.g. (config, shards). Leaves that cannot be
    weakly referenced (numpy arrays) are converted every time.
    """
    leaves = jax.tree.leaves(params)
    key = (what, tuple(id(leaf) for leaf in leaves))
    entry = _CONVERTED.get(key)
    if entry is not None and all(ref() is leaf for ref, leaf in zip(entry[0], leaves)):
        return entry[1]
    converted = convert(params)
    try:
        refs = [weakref.ref(leaf, lambda _, key=key: _CONVERTED.pop(key, None)) for leaf in leaves]
    except TypeError:
        return converted
    _CONVERTED[key] = (refs, converted)
    return converted


@dataclasses.dataclass(frozen=True)
class Model:
    """A transformer as a pure function: static structure here, weights passed separately.

    Hashable, so it is a static argument of jit; equal models share compiled programs.

    `feature_layers`: layers whose outputs `forward` also returns (EAGLE-3's multi-layer
    features, `with_feature_layers`); empty: the last hidden state alone.
    """

    graphdef: Any
    config: ModelConfig
    feature_layers: tuple[int, ...] = dataclasses.field(default=(), kw_only=True)

    def __hash__(self) -> int:
        return hash_fields(self)

    @staticmethod
    def split(module: Transformer) -> tuple[Model, Params]:
        graphdef, params = nnx.split(module)
        return Model(graphdef=graphdef, config=module.config), params

    def merge(self, params: Params) -> Transformer:
        return nnx.merge(self.graphdef, params)

    @property
    def shards(self) -> int:
        """Tensor-parallel degree of this model's decode layout (1: one device)."""
        return 1

    def with_feature_layers(self, feature_layers: tuple[int, ...]) -> Model:
        """This model, its `forward` returning the outputs of `feature_layers` too."""
        check_feature_layers(tuple(feature_layers), self.config.num_layers)
        return dataclasses.replace(self, feature_layers=tuple(feature_layers))

    def decode_params(self, params: Params) -> DecodeParams:
        """The decode layout of `params`.

        Storage-layout params are converted once by a compiled program into a new copy of the
        weights, which is remembered while the originals live (a second call returns the same
        copy). To hold a single copy, keep the result and drop the originals.
        """
        if isinstance(params, DecodeParams):
            return to_decode_params(self.config, params, self.shards)
        return converted_once(
            ("decode", self.config, self.shards),
            params,
            lambda p: _decode_params_jit(self.config, p, self.shards),
        )

    def forward(
        self,
        params: Params,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: kv_cache.KVCache,
        extra_mask_BxTxT: jax.Array | None = None,
        *,
        logits: bool = True,
    ) -> tuple[jax.Array | None, jax.Array, kv_cache.KVCache]:
        """One forward pass over T new tokens per row.

        Args:
          params: the weights, decode layout (`decode_params`) or storage layout (from
            `Model.split`; fused inside the program, at a cost in copies).
          tokens_BxT: int32 token ids.
          positions_BxT: int32 positions (RoPE and sliding windows).
          cache: the KV cache; the new tokens are written to slots
            [lengths[b], lengths[b] + T), which the caller guarantees fit.
          extra_mask_BxTxT: optional boolean mask among the new tokens (tree attention);
            default causal.
          logits: False skips the LM head (logits None): a caller that needs a few rows'
            logits projects them with `logits` (prefill: each row's last prompt token).

        Returns:
          (logits [B,T,V] float32, hidden [B,T,D] after the final norm, cache with
          lengths += T). Rejecting tokens afterwards is `cache.rollback`. With
          `feature_layers` (n of them) hidden is [B,T,(n+1)D]: each listed layer's output
          scaled to unit RMS, in order, then the last hidden state.
        """
        params = to_decode_params(self.config, params, self.shards)
        return forward(
            self.config, params, tokens_BxT, positions_BxT, cache, extra_mask_BxTxT,
            self.feature_layers, logits,
        )  # fmt: skip

    def logits(self, params: Params, hidden_BxTxD: jax.Array) -> jax.Array:
        """float32 logits [B, T, V] of `forward`'s hidden output (with feature layers, its last
        D columns are the final hidden state)."""
        params = to_decode_params(self.config, params, self.shards)
        return lm_head(self.config, params, hidden_BxTxD[..., -self.config.d_model :])

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> kv_cache.KVCache:
        kv_heads, _ = layers.cached_kv_heads(self.config, self.shards)
        return kv_cache.init_cache(
            self.config, batch_size, max_len, dtype or jnp.float32, kv_heads=kv_heads
        )


# id -> (graphdef, its hash): the graphdef is kept, so its id is not reused while listed.
_GRAPHDEF_HASHES: dict[int, tuple[Any, int]] = {}


def _graphdef_hash(graphdef: Any) -> int:
    entry = _GRAPHDEF_HASHES.get(id(graphdef))
    if entry is None or entry[0] is not graphdef:
        entry = _GRAPHDEF_HASHES[id(graphdef)] = (graphdef, hash(graphdef))
    return entry[1]


def hash_fields(instance: Any) -> int:
    """The hash of a frozen dataclass's fields, as the generated `__hash__` computes it, but
    with a `graphdef` field's hash remembered: jit hashes its static arguments at every call,
    and an nnx GraphDef hashes its whole module tree (~0.4 ms of host time per `generate` call
    for a model, as much again for an EAGLE head)."""
    return hash(
        tuple(
            _graphdef_hash(value) if field.name == "graphdef" else value
            for field in dataclasses.fields(instance)
            for value in (getattr(instance, field.name),)
        )
    )


def params_dtype(params: Params) -> jnp.dtype:
    """The dtype of the weights: the promotion of their floating dtypes. (The distinct dtypes
    first: every `generate` call asks, and promoting hundreds of leaves one by one cost a
    millisecond of host time per call.)"""
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(params)}
    return jnp.result_type(*[d for d in dtypes if jnp.issubdtype(d, jnp.floating)])


def init_model(config: ModelConfig, seed: int = 0, param_dtype=jnp.float32) -> tuple[Model, Params]:
    """Random weights (tests, synthetic benchmarks) as a (Model, params) pair."""
    return Model.split(Transformer(config, rngs=nnx.Rngs(seed), param_dtype=param_dtype))


def abstract_model(config: ModelConfig, param_dtype=jnp.float32) -> tuple[Model, Params]:
    """Structure and parameter shapes without allocating (for loaders and sharded init)."""
    abstract = nnx.eval_shape(
        lambda: Transformer(config, rngs=nnx.Rngs(0), param_dtype=param_dtype)
    )
    return Model.split(abstract)


def abstract_decode_params(
    config: ModelConfig, param_dtype=jnp.float32, shards: int = 1
) -> DecodeParams:
    """Shapes of the decode layout (`jax.ShapeDtypeStruct` leaves), nothing allocated; marked
    for inference, as `Model.decode_params` (benchmarks build their weights on it)."""
    _, abstract = abstract_model(config, param_dtype)
    return jax.eval_shape(lambda p: to_decode_params(config, p, shards, inference=True), abstract)

"""Draft heads on the target's own hidden states: EAGLE (Li et al. 2024) and Medusa (Cai et al.
2024). Both are small trained modules (see `specjax.training`) that reuse the target's token
embedding and LM head, and read the target's features from `DraftContext.target_hidden`.

Dimension legend: B batch, S sequence slots, T positions fed at once, W catch-up window,
K draft length (gamma), V vocab, D target width, H Medusa heads, L sequence length of a row.

Feature bookkeeping (see `decoding/state.py`): f_j is the target's last hidden state (after the
final norm) at position j; it has seen tokens t_0..t_j and its LM-head logits predict t_{j+1}.
With L = seq_lengths[b], f_j is known for j <= L - 2: the newest token t_{L-1} has not been
through the target yet.

* Medusa: head i (1-based) maps f_j to a distribution over t_{j+i+1}: from f_{L-2}, head i
  drafts x_i = t_{L-1+i}. Head = residual block h + SiLU(W_i h + b_i), then the target's LM
  head (shared and frozen; Medusa-1 gives each head its own copy, which at V = 49k would be
  28M parameters per head). W_i starts at zero, so an untrained head repeats the target's own
  next-token guess. The heads are independent of one another, so γ <= H.

* EAGLE: an autoregressive one-layer decoder over (feature, next token) pairs. Entry j reads
  fc([f_j ; e(t_{j+1})]) at RoPE position j and predicts f_{j+1}, whose LM-head logits give
  t_{j+2}. Drafting continues from the last true feature f_{L-2} and the newest token t_{L-1},
  then feeds its own predicted features: entry L-1 = (f̂_{L-1}, x_1) predicts f̂_L -> x_2, ...
  Its KV cache holds entries at their positions. Entries computed from predicted features are
  recomputed from the true ones once the target has verified them (EAGLE does the same): each
  `propose` first re-feeds a window of the last W = K + 1 entries with true features (at most
  K + 1 became known since the last call), or, when a row lags further behind (the first call,
  right after the prompt), recomputes every entry in one S-wide pass (a `lax.cond`, so the
  wide pass runs once per generation).

EAGLE-3 inputs (`EagleDrafter.feature_layers`): the head also reads chosen target layers'
outputs. The loop then runs the target with those layers (`Model.with_feature_layers`), so
f_j is [(n + 1) D]: each layer's output at unit RMS, then the last hidden state. A `fuse`
layer maps it to D wherever the head reads true features (the catch-up); its own predicted
features stay D wide, and the LM head reads the last D only.

Token trees: EAGLE drafts static and dynamic (EAGLE-2) trees (`EagleDrafter.propose_tree`,
through `drafters/tree_expansion.py`): each tree node is an entry fed its parent's predicted
feature. Medusa does not draft trees here.

Int8 drafting (`EagleDrafter.weights = "int8"`, spec key ``weights=int8``): the EAGLE head
drafts with its matrices, and its draft vocabulary's LM head slice, as weight-only int8 with
per-column scales (`models/quantize.py`, `int8_decode_params`), made once per weights beside
the decode layout. At batch 1 a draft step reads those weights and little else, so this
about halves its bytes in bfloat16; the target still verifies every token.

Sampling: the drafted tokens are drawn from the heads' softmax after the same temperature /
top-k / top-p as the target (`sampling.probs`), and those distributions are returned, so
rejection sampling stays lossless. Greedy drafting takes the argmax.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specjax import cache as kv_cache
from specjax.decoding import sampling as sampling_lib
from specjax.decoding.drafter import Drafter
from specjax.decoding.state import DraftContext
from specjax.decoding.tree import AnyTreeSpec, DraftTree, DynamicTreeSpec, drafters_tree, per_row
from specjax.drafters import tree_expansion
from specjax.models import layers
from specjax.models.config import NO_WINDOW, ModelConfig
from specjax.models.layers import Block
from specjax.models.quantize import DRAFT_WEIGHTS, Int8Weight, matmul, quantize_int8
from specjax.models.transformer import (
    DecodeParams,
    Model,
    Params,
    check_feature_layers,
    converted_once,
    hash_fields,
    hidden_width,
)

HEAD_KINDS = ("eagle", "medusa")
FORMAT_VERSION = 1
SPEC_FILE = "heads.json"
COUNTS_FILE = "token_counts.npy"  # int64[V]: the training answers' tokens (draft vocabularies)
_PARAMS_DIR = "params"

# Parameters of a head drafter: {"head": the trained head (pure dict), "io": target I/O}.
HeadParams = dict[str, Any]


# --------------------------------------------------------------------------------------------
# The target's input embedding and LM head, shared (not copied) by every head.


def target_io(target_params: Params) -> dict[str, Any]:
    """{"embedding": [V, D], "lm_head": [D, V] or None (tied)}: the same arrays as the target's
    (no copy), so a head drafter adds only its own weights to memory."""
    if isinstance(target_params, DecodeParams):
        return {"embedding": target_params.embedding, "lm_head": target_params.lm_head}
    pure = (
        nnx.to_pure_dict(target_params) if isinstance(target_params, nnx.State) else target_params
    )
    lm_head = pure["lm_head"]["kernel"] if "lm_head" in pure else None
    return {"embedding": pure["embedder"]["embedding"], "lm_head": lm_head}


def embed_tokens(io: dict[str, Any], tokens_BxT: jax.Array, config: ModelConfig) -> jax.Array:
    """The target's input embedding of tokens [B, T, D] (Gemma's sqrt(D) scale included)."""
    x_BxTxD = jnp.take(io["embedding"], tokens_BxT, axis=0)
    if config.embed_scale:
        x_BxTxD = x_BxTxD * jnp.asarray(config.d_model**0.5, x_BxTxD.dtype)
    return x_BxTxD


def lm_logits(io: dict[str, Any], hidden_xD: jax.Array, config: ModelConfig) -> jax.Array:
    """The target's LM head on (already normalised) features: float32 logits [..., V]."""
    head_DxV = io["embedding"].T if io["lm_head"] is None else io["lm_head"]
    return _project(hidden_xD, head_DxV, config)


def _project(
    hidden_xD: jax.Array, head_DxN: jax.Array | Int8Weight, config: ModelConfig
) -> jax.Array:
    """Features through N columns of an LM head (with the target's logit softcap): float32
    logits [..., N]. `head_DxN` may be an `Int8Weight` (a draft vocabulary's slice drafting
    with int8 weights, `int8_decode_params`)."""
    if not isinstance(head_DxN, Int8Weight):
        head_DxN = head_DxN.astype(hidden_xD.dtype)
    logits_xN = matmul(hidden_xD, head_DxN, preferred_element_type=jnp.float32)
    if config.final_logit_softcap:
        cap = config.final_logit_softcap
        logits_xN = jnp.tanh(logits_xN / cap) * cap
    return logits_xN


def vocab_logits(io: dict[str, Any], hidden_xD: jax.Array, config: ModelConfig) -> jax.Array:
    """The LM head as training scores it: `lm_logits` [..., V], or, when `io` carries a draft
    vocabulary (`with_draft_vocab`), the logits of those Vd tokens only, [..., Vd] (column i
    is token io["draft_ids"][i]): a softmax over them is the target's distribution restricted
    to the draft vocabulary and renormalised."""
    if io.get("draft_ids") is None:
        return lm_logits(io, hidden_xD, config)
    return _project(hidden_xD, io["draft_head"], config)


def draft_logits(io: dict[str, Any], hidden_xD: jax.Array, config: ModelConfig) -> jax.Array:
    """The LM head as drafting uses it: `lm_logits`, or, when `io` carries a draft vocabulary
    (`with_draft_vocab`), logits over those Vd tokens only, read from a [D, Vd] slice of the
    LM head and placed in a [..., V] array at the float32 minimum elsewhere (softmax gives
    them probability 0; argmax and top-k never pick them). Verification is untouched, so
    greedy output stays the target's; under sampling the drafted q is zero outside the draft
    vocabulary, which the rejection rule handles like any other q."""
    logits_xN = vocab_logits(io, hidden_xD, config)
    if io.get("draft_ids") is None:
        return logits_xN
    full_xV = jnp.full(logits_xN.shape[:-1] + (config.vocab_size,), jnp.finfo(jnp.float32).min)
    return full_xV.at[..., io["draft_ids"]].set(logits_xN)


def with_draft_vocab(params: HeadParams, token_ids: Any) -> HeadParams:
    """Head params that draft over `token_ids` only (EAGLE-3's reduced draft vocabulary):
    each draft step reads Vd rows of the LM head instead of V (at V = 151,936 and D = 1,536
    the full head is 467 MB in bf16, 15% of Qwen2.5-1.5B's weights). The [D, Vd] slice is a
    copy made once here."""
    io = params["io"]
    ids_Vd = jnp.asarray(sorted({int(t) for t in token_ids}), jnp.int32)
    V = io["embedding"].shape[0]
    if ids_Vd.size == 0 or int(ids_Vd[0]) < 0 or int(ids_Vd[-1]) >= V:
        raise ValueError(f"draft vocabulary ids must be a non-empty subset of [0, {V})")
    head_DxV = io["embedding"].T if io["lm_head"] is None else io["lm_head"]
    draft_io = {**io, "draft_ids": ids_Vd, "draft_head": jnp.take(head_DxV, ids_Vd, axis=1)}
    return {**params, "io": draft_io}


def _draw(
    rng: jax.Array, logits_xV: jax.Array, sampling: sampling_lib.Sampling
) -> tuple[jax.Array, jax.Array | None]:
    """Tokens from logits and, when sampling, the distributions they came from."""
    tokens_x = sampling_lib.sample(rng, logits_xV, sampling)
    probs_xV = None if sampling.greedy else sampling_lib.probs(logits_xV, sampling)
    return tokens_x, probs_xV


def draft_tokens(
    rng: jax.Array,
    io: dict[str, Any],
    hidden_xD: jax.Array,
    config: ModelConfig,
    sampling: sampling_lib.Sampling,
) -> tuple[jax.Array, jax.Array | None]:
    """Draft tokens from features and, when sampling, their distributions over V.

    Greedy drafting over a draft vocabulary takes the argmax of its Vd logits and maps it to
    a token id, never building [..., V] logits: the same token as the argmax of
    `draft_logits` (ids are sorted, so ties resolve to the same lowest id)."""
    if sampling.greedy and io.get("draft_ids") is not None:
        sub_xVd = vocab_logits(io, hidden_xD, config)
        return jnp.take(io["draft_ids"], jnp.argmax(sub_xVd, axis=-1)), None
    return _draw(rng, draft_logits(io, hidden_xD, config), sampling)


def _newest_feature(context: DraftContext) -> jax.Array:
    """f_{L-2} per row [B, D]: the latest position the target has seen."""
    if context.target_hidden is None:
        raise ValueError(
            "this drafter reads the target's hidden states, but the context has none: run it "
            "through specjax.generate (which fills them for drafters with needs_target_hidden)"
        )
    index_B = context.seq_lengths - 2
    return jnp.take_along_axis(context.target_hidden, index_B[:, None, None], axis=1)[:, 0]


# --------------------------------------------------------------------------------------------
# Medusa.


class MedusaHeads(nnx.Module):
    """H residual blocks on the target's feature: h_i = h + SiLU(h W_i + b_i)."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        del rngs  # zero init (Medusa): every head starts as the target's own LM head
        self.kernel = nnx.Param(jnp.zeros((num_heads, d_model, d_model), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_heads, d_model), param_dtype))

    def __call__(self, hidden_xD: jax.Array) -> jax.Array:
        """Features [..., H, D] of every head from features [..., D]."""
        h_xD = hidden_xD.astype(self.kernel.dtype)
        pre_xHxD = jnp.einsum("...d,hde->...he", h_xD, self.kernel[...]) + self.bias[...]
        return h_xD[..., None, :] + jax.nn.silu(pre_xHxD)


@dataclasses.dataclass(frozen=True)
class MedusaDrafter(Drafter):
    """Medusa heads as a Drafter: stateless, one head call per draft (see module docstring)."""

    graphdef: Any
    target_config: ModelConfig
    num_heads: int

    def __hash__(self) -> int:
        return hash_fields(self)  # the graphdef's hash remembered: jit hashes us every call

    needs_target_hidden: ClassVar[bool] = True
    kind: ClassVar[str] = "medusa"

    @property
    def vocab_size(self) -> int:
        return self.target_config.vocab_size

    def head_config(self) -> dict[str, Any]:
        return {"num_heads": self.num_heads}

    def head_features(self, params: HeadParams, hidden_xD: jax.Array) -> jax.Array:
        """Features [..., H, D] of every head (before the LM head)."""
        return nnx.merge(self.graphdef, params["head"])(hidden_xD)

    def head_logits(self, params: HeadParams, hidden_xD: jax.Array) -> jax.Array:
        """Logits [..., H, V]: head i's distribution over the token i + 1 steps ahead."""
        return lm_logits(params["io"], self.head_features(params, hidden_xD), self.target_config)

    def init(self, params, prompt_BxP, prompt_lengths_B, max_len):
        del params, prompt_BxP, prompt_lengths_B, max_len
        return None

    def update(self, params, state, context, num_kept):
        del params, context, num_kept
        return state

    def propose(
        self,
        params: HeadParams,
        state: None,
        context: DraftContext,
        gamma: int,
        sampling: sampling_lib.Sampling,
        rng: jax.Array,
    ) -> tuple[jax.Array, jax.Array | None, None]:
        if gamma > self.num_heads:
            raise ValueError(
                f"gamma={gamma} exceeds the {self.num_heads} Medusa heads (head i drafts "
                "position i); train more heads or lower gamma"
            )
        features_BxHxD = self.head_features(params, _newest_feature(context))
        tokens_BxK, probs_BxKxV = draft_tokens(
            rng, params["io"], features_BxHxD[:, :gamma], self.target_config, sampling
        )
        return tokens_BxK, probs_BxKxV, state


# --------------------------------------------------------------------------------------------
# EAGLE.


def eagle_block_config(target_config: ModelConfig, ffn_dim: int | None = None) -> ModelConfig:
    """The head's one decoder layer: the target's layer type (attention shape, RoPE, norms),
    global attention, optionally a narrower MLP."""
    return target_config.replace(
        num_layers=1,
        ffn_dim=ffn_dim or target_config.ffn_dim,
        sliding_window=NO_WINDOW,
        sliding_window_pattern=0,
    )


class EagleHead(nnx.Module):
    """fc([feature ; token embedding]) -> one decoder layer -> predicted next feature.

    With `feature_width` F > 0 (EAGLE-3's multi-layer features, `EagleDrafter.feature_layers`)
    the head also has `fuse`, [F] -> [D], applied to the target's own features only
    (`fuse_target_features`); the features it predicts are D wide and enter fc directly."""

    def __init__(
        self,
        block_config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        feature_width: int = 0,
    ):
        D = block_config.d_model
        self.block_config = block_config
        if feature_width:
            self.fuse = nnx.Linear(
                feature_width,
                D,
                use_bias=True,
                param_dtype=param_dtype,
                kernel_init=nnx.initializers.normal(stddev=feature_width**-0.5),
                rngs=rngs,
            )
        self.fc = nnx.Linear(
            2 * D,
            D,
            use_bias=True,
            param_dtype=param_dtype,
            kernel_init=nnx.initializers.normal(stddev=(2 * D) ** -0.5),
            rngs=rngs,
        )
        self.block = Block(block_config, rngs=rngs, param_dtype=param_dtype)

    def __call__(
        self,
        features_BxTxD: jax.Array,
        token_embeddings_BxTxD: jax.Array,
        positions_BxT: jax.Array,
        cache: kv_cache.KVCache,
        mask_BxTxS: jax.Array | None = None,
    ) -> tuple[jax.Array, kv_cache.KVCache]:
        """T entries written at slots [cache.lengths, + T); returns (predicted next features
        [B, T, D], cache with lengths += T). `cache` has one layer. `mask_BxTxS` replaces the
        default (every valid slot + causal among the new entries): training uses it to
        replay multi-step drafting (see `objectives.eagle_loss`)."""
        head = eagle_decode_head(nnx.to_pure_dict(nnx.state(self, nnx.Param)), self.block_config)
        return eagle_forward(
            head, self.block_config, features_BxTxD, token_embeddings_BxTxD, positions_BxT,
            cache, mask_BxTxS,
        )  # fmt: skip


def eagle_decode_head(
    head: dict[str, Any], block_config: ModelConfig, dtype=None, inference: bool = False
) -> dict:
    """An EAGLE head's storage-layout weights ({"fc", "block"}, as saved) in the decode layout:
    {"fc_kernel": [2D, D], "fc_bias": [D], "layer": `LayerParams`} with q/k/v and gate/up
    fused, cast to `dtype` (None: kept). Training fuses on the fly inside its program;
    drafting converts once per generation (`EagleDrafter.decode_params`) so the draft steps
    read the fused weights in place instead of concatenating them at every step, and marks
    the layer `inference` (`layers.LayerParams.inference`: Pallas projection kernels allowed)."""
    cast = (lambda x: x) if dtype is None else (lambda x: jnp.asarray(x, dtype))
    decoded = {
        "fc_kernel": cast(head["fc"]["kernel"]),
        "fc_bias": cast(head["fc"]["bias"]),
        "layer": jax.tree.map(
            cast, layers.fuse_block(head["block"], block_config, inference=inference)
        ),
    }
    if "fuse" in head:
        decoded["fuse_kernel"] = cast(head["fuse"]["kernel"])
        decoded["fuse_bias"] = cast(head["fuse"]["bias"])
    return decoded


def last_hidden(features_xF: jax.Array, config: ModelConfig) -> jax.Array:
    """The target's last hidden state (after its final norm) [..., D] from its features: all
    of them, or the last D of multi-layer features (`Model.with_feature_layers`)."""
    return features_xF[..., -config.d_model :]


def fuse_target_features(head: dict[str, Any], features_xF: jax.Array) -> jax.Array:
    """The target's features as the head's fc reads them: [..., F] -> [..., D] through the
    head's `fuse` layer (either layout), or unchanged for a head without one (F = D)."""
    if "fuse" in head:
        kernel_FxD, bias_D = head["fuse"]["kernel"], head["fuse"]["bias"]
    elif "fuse_kernel" in head:
        kernel_FxD, bias_D = head["fuse_kernel"], head["fuse_bias"]
    else:
        return features_xF
    x_xF = features_xF.astype(bias_D.dtype)  # the head's dtype (the kernel may be int8)
    return matmul(x_xF, kernel_FxD) + bias_D


def eagle_forward(
    head: dict[str, Any],
    block_config: ModelConfig,
    features_BxTxD: jax.Array,
    token_embeddings_BxTxD: jax.Array,
    positions_BxT: jax.Array,
    cache: kv_cache.KVCache,
    mask_BxTxS: jax.Array | None = None,
) -> tuple[jax.Array, kv_cache.KVCache]:
    """`EagleHead.__call__` on decode-layout weights (`eagle_decode_head`, or with int8
    matrices, `int8_decode_params`): the one implementation of the head's math."""
    dtype = head["fc_bias"].dtype  # the head's dtype (fc_kernel may be an Int8Weight)
    x_BxTx2D = jnp.concatenate(
        [features_BxTxD.astype(dtype), token_embeddings_BxTxD.astype(dtype)], axis=-1
    )
    pad = layers.pads_single_rows(block_config.d_model)
    x_BxTxD = layers.project(x_BxTx2D, head["fc_kernel"], pad) + head["fc_bias"]
    if mask_BxTxS is None:
        mask_BxTxS = kv_cache.attention_mask(cache.lengths, positions_BxT, cache.max_len)
    rotary = layers.Rotary.create(
        positions_BxT, jnp.float32(block_config.rope_theta), block_config.head_dim
    )
    out_BxTxD, k_BxSxGxDh, v_BxSxGxDh = layers.decoder_layer(
        head["layer"], x_BxTxD, rotary, cache.k[0], cache.v[0], cache.lengths, mask_BxTxS,
        block_config,
    )  # fmt: skip
    T = features_BxTxD.shape[1]
    return out_BxTxD, kv_cache.KVCache(k=(k_BxSxGxDh,), v=(v_BxSxGxDh,), lengths=cache.lengths + T)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _eagle_decode_head_jit(head: dict[str, Any], block_config: ModelConfig, dtype) -> dict:
    return eagle_decode_head(head, block_config, dtype, inference=True)


# The decode layer's matrices an int8 head stores as `Int8Weight` (its norms and biases stay).
_INT8_LAYER_MATRICES = ("qkv", "o", "gate_up", "down")


def int8_decode_params(params: HeadParams, parts: str = "int8") -> HeadParams:
    """Decode-layout EAGLE head params (`EagleDrafter.decode_params`) with matrices as
    `quantize.Int8Weight`. `parts` (an int8 value of `quantize.DRAFT_WEIGHTS`):
      * "int8_layer": the fuse and fc layers and the decoder layer's q/k/v, o, gate/up and
        down (norms, biases and the embedding stay);
      * "int8_lm_head": the LM head's draft-vocabulary slice (`with_draft_vocab`, a copy made
        for the head); without a draft vocabulary the LM head is the target's own array,
        shared rather than copied, and this setting is refused;
      * "int8": both (without a draft vocabulary, the layers only).

    Each call for the same matrices returns the same quantized arrays (`converted_once`), so
    `specjax.generate` quantizes once per weights and passes them to its program as
    arguments. Matrices that are Int8Weights already are kept."""
    head, io = params["head"], params["io"]
    if "layer" not in head:
        raise ValueError("int8_decode_params takes the decode layout (decode_params' head)")
    if parts not in DRAFT_WEIGHTS or parts == "float":
        raise ValueError(f"parts must be an int8 setting of {DRAFT_WEIGHTS}, got {parts!r}")
    has_draft_vocab = io.get("draft_ids") is not None
    if parts == "int8_lm_head" and not has_draft_vocab:
        raise ValueError(
            "weights=int8_lm_head quantizes the draft vocabulary's LM head slice: give the "
            "drafter a draft_vocab (the full LM head is the target's own array, not copied)"
        )
    layer = head["layer"]
    matrices = {}
    if parts in ("int8", "int8_layer"):
        matrices["fc_kernel"] = head["fc_kernel"]
        matrices |= {name: getattr(layer, name) for name in _INT8_LAYER_MATRICES}
        if "fuse_kernel" in head:
            matrices["fuse_kernel"] = head["fuse_kernel"]
    if parts in ("int8", "int8_lm_head") and has_draft_vocab:
        matrices["draft_head"] = io["draft_head"]
    plain = {name: w for name, w in matrices.items() if not isinstance(w, Int8Weight)}
    if not plain:
        return params
    matrices |= converted_once(("eagle-int8", tuple(sorted(plain))), plain, _quantize_int8_jit)
    head = dict(head)
    if "fc_kernel" in matrices:
        head["fc_kernel"] = matrices["fc_kernel"]
        head["layer"] = dataclasses.replace(
            layer, **{name: matrices[name] for name in _INT8_LAYER_MATRICES}
        )
    if "fuse_kernel" in matrices:
        head["fuse_kernel"] = matrices["fuse_kernel"]
    if "draft_head" in matrices:
        io = {**io, "draft_head": matrices["draft_head"]}
    return {**params, "head": head, "io": io}


@jax.jit
def _quantize_int8_jit(matrices: dict[str, jax.Array]) -> dict[str, Int8Weight]:
    return {name: quantize_int8(w_DxN) for name, w_DxN in matrices.items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EagleState:
    """Fields: cache: the head's one-layer KVCache ([1, B, S, G, Dh]); true_lengths: int32[B],
    entries [0, true_lengths) were computed from the target's true features."""

    cache: kv_cache.KVCache
    true_lengths: jax.Array


@dataclasses.dataclass(frozen=True)
class EagleDrafter(Drafter):
    """The EAGLE head as a Drafter (see module docstring).

    `feature_layers` (EAGLE-3): target layers whose outputs the head reads beside the last
    hidden state. `specjax.generate` then runs the target with them
    (`Model.with_feature_layers`), so `context.target_hidden` is [B, S, (n + 1) D], which
    the head's `fuse` layer maps to D where it reads true features (the catch-up).

    `weights`: how drafting stores the head's matrices (a value of `quantize.DRAFT_WEIGHTS`):
    "float", as loaded (cast to the target's dtype by `decode_params`), or "int8", weight-only
    int8 with per-column scales (`int8_decode_params`), about half the bytes each draft step
    reads in bfloat16; "int8_layer" / "int8_lm_head" quantize only the head's layer / only
    its draft-vocabulary LM head slice (which part costs acceptance). Drafts may differ; the
    output does not (the target verifies every token). Not a property of the trained head:
    not saved with it."""

    graphdef: Any
    target_config: ModelConfig
    block_config: ModelConfig
    feature_layers: tuple[int, ...] = ()
    weights: str = "float"

    def __hash__(self) -> int:
        return hash_fields(self)  # the graphdef's hash remembered: jit hashes us every call

    needs_target_hidden: ClassVar[bool] = True
    supports_trees: ClassVar[bool] = True
    kind: ClassVar[str] = "eagle"

    def __post_init__(self):
        if self.weights not in DRAFT_WEIGHTS:
            raise ValueError(
                f"EAGLE drafter weights must be one of {', '.join(map(repr, DRAFT_WEIGHTS))}, "
                f"got {self.weights!r}"
            )

    @property
    def vocab_size(self) -> int:
        return self.target_config.vocab_size

    @property
    def target_feature_layers(self) -> tuple[int, ...]:
        """The target layers the loop must return features of (read by `specjax.generate`)."""
        return self.feature_layers

    def head_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"ffn_dim": self.block_config.ffn_dim}
        if self.feature_layers:  # absent from EAGLE-1 heads.json files
            config["feature_layers"] = list(self.feature_layers)
        return config

    def apply(
        self,
        params: HeadParams,
        features_BxTxD: jax.Array,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: kv_cache.KVCache,
        mask_BxTxS: jax.Array | None = None,
        *,
        target_features: bool = False,
    ) -> tuple[jax.Array, kv_cache.KVCache]:
        """Entries (f_j, t_{j+1}) at positions j -> (predicted f_{j+1} [B, T, D], cache).

        `params["head"]` is the storage layout (training: fused inside the program) or the
        decode layout of `decode_params` (drafting). `target_features`: the features are the
        target's own ([B, T, F], through the head's `fuse` layer when it has one), not ones
        the head predicted ([B, T, D])."""
        if target_features:
            features_BxTxD = fuse_target_features(params["head"], features_BxTxD)
        embeddings_BxTxD = embed_tokens(params["io"], tokens_BxT, self.target_config)
        if "layer" in params["head"]:
            return eagle_forward(
                params["head"], self.block_config, features_BxTxD, embeddings_BxTxD,
                positions_BxT, cache, mask_BxTxS,
            )  # fmt: skip
        if self.weights != "float":
            # The storage layout (training, the mesh path) is fused on the fly, in float.
            raise ValueError(
                f"an EAGLE drafter with weights={self.weights} drafts from the decode layout "
                "(EagleDrafter.decode_params, which specjax.generate applies without mesh=); "
                "these params are the storage layout"
            )
        head = nnx.merge(self.graphdef, params["head"])
        return head(features_BxTxD, embeddings_BxTxD, positions_BxT, cache, mask_BxTxS)

    def decode_params(self, params: HeadParams, dtype=None) -> HeadParams:
        """`params` with the head in the decode layout (`eagle_decode_head`), cast to `dtype`
        (`specjax.generate` passes the target's: heads trained in float32 then draft in
        bfloat16 beside a bfloat16 target, reading half the bytes), then, with `weights`
        "int8", its matrices quantized (`int8_decode_params`). Converted once per weights,
        like `Model.decode_params`."""
        head = params["head"]
        if "layer" not in head:
            dtype = None if dtype is None else jnp.dtype(dtype)
            decoded = converted_once(
                ("eagle-decode", self.block_config, dtype),
                head,
                lambda h: _eagle_decode_head_jit(h, self.block_config, dtype),
            )
            params = {**params, "head": decoded}
        if self.weights != "float":
            params = int8_decode_params(params, self.weights)
        return params

    def init_cache(self, batch_size: int, max_len: int, dtype) -> kv_cache.KVCache:
        return kv_cache.init_cache(self.block_config, batch_size, max_len, dtype)

    def init(
        self, params: HeadParams, prompt_BxP: jax.Array, prompt_lengths_B: jax.Array, max_len: int
    ) -> EagleState:
        # No features yet (the target's prefill runs outside the drafter): the first `propose`
        # builds the cache from the context.
        del prompt_lengths_B
        B = prompt_BxP.shape[0]
        head = params["head"]
        # The head's dtype, from a bias: with int8 weights the kernels are Int8Weights.
        dtype = (head["fc_bias"] if "layer" in head else head["fc"]["bias"]).dtype
        return EagleState(
            cache=self.init_cache(B, max_len, dtype), true_lengths=jnp.zeros((B,), jnp.int32)
        )

    def _catch_up(
        self, params: HeadParams, state: EagleState, context: DraftContext, width: int
    ) -> tuple[jax.Array, kv_cache.KVCache]:
        """Recomputes entries [start, L - 1) from true features, start = max(L - 1 - width, 0),
        in one `width`-wide call. Returns the output at entry L - 2 ([B, D], the predicted
        f_{L-1}) and the cache holding entries [0, L - 1).

        Window entries past L - 2 (rows with start clamped at 0) read clipped garbage; their
        slots lie beyond the returned length and the causal mask hides them from entry L - 2.
        """
        L_B = context.seq_lengths
        S_seq = context.sequence.shape[1]
        start_B = jnp.maximum(L_B - 1 - width, 0)
        entries_BxW = start_B[:, None] + jnp.arange(width, dtype=jnp.int32)
        feature_index_BxW = jnp.clip(entries_BxW, 0, context.target_hidden.shape[1] - 1)
        token_index_BxW = jnp.clip(entries_BxW + 1, 0, S_seq - 1)
        features_BxWxD = jnp.take_along_axis(
            context.target_hidden, feature_index_BxW[..., None], axis=1
        )
        tokens_BxW = jnp.take_along_axis(context.sequence, token_index_BxW, axis=1)
        cache = kv_cache.rollback(state.cache, start_B)
        out_BxWxD, cache = self.apply(
            params, features_BxWxD, tokens_BxW, entries_BxW, cache, target_features=True
        )
        last_BxD = jnp.take_along_axis(out_BxWxD, (L_B - 2 - start_B)[:, None, None], axis=1)[:, 0]
        return last_BxD, kv_cache.rollback(cache, L_B - 1)

    def _catch_up_newest(
        self, params: HeadParams, state: EagleState, context: DraftContext, window: int
    ) -> tuple[jax.Array, kv_cache.KVCache]:
        """`_catch_up` over `window` entries, or over the whole cache when a row lags further
        behind (the first call); `window` bounds the entries verified since the last call."""
        if context.target_hidden is None:
            _newest_feature(context)  # raises the explanatory error
        full_width = state.cache.max_len
        lagging = jnp.any(context.seq_lengths - 1 - state.true_lengths > window)
        return jax.lax.cond(
            lagging,
            lambda: self._catch_up(params, state, context, full_width),
            lambda: self._catch_up(params, state, context, min(window, full_width)),
        )

    def propose(
        self,
        params: HeadParams,
        state: EagleState,
        context: DraftContext,
        gamma: int,
        sampling: sampling_lib.Sampling,
        rng: jax.Array,
    ) -> tuple[jax.Array, jax.Array | None, EagleState]:
        K = gamma
        L_B = context.seq_lengths
        feature_BxD, cache = self._catch_up_newest(params, state, context, window=K + 1)
        true_lengths_B = L_B - 1
        step_rngs = jax.random.split(rng, K)
        io = params["io"]
        first_token_B, first_probs_BxV = draft_tokens(
            step_rngs[0], io, feature_BxD, self.target_config, sampling
        )

        def draft_step(carry, step_rng):
            cache, feature_BxD, token_B, position_B = carry
            out_Bx1xD, cache = self.apply(
                params, feature_BxD[:, None], token_B[:, None], position_B[:, None], cache
            )
            feature_BxD = out_Bx1xD[:, 0]
            next_token_B, probs_BxV = draft_tokens(
                step_rng, io, feature_BxD, self.target_config, sampling
            )
            return (cache, feature_BxD, next_token_B, position_B + 1), (next_token_B, probs_BxV)

        # Entry L - 1 + i pairs the predicted f_{L-1+i} with draft token x_{i+1}.
        (cache, _, _, _), (rest_KxB, rest_probs_KxBxV) = jax.lax.scan(
            draft_step, (cache, feature_BxD, first_token_B, L_B - 1), step_rngs[1:]
        )
        tokens_BxK = jnp.concatenate([first_token_B[:, None], rest_KxB.T], axis=1)
        probs_BxKxV = None
        if not sampling.greedy:
            probs_BxKxV = jnp.concatenate(
                [first_probs_BxV[:, None], jnp.moveaxis(rest_probs_KxBxV, 0, 1)], axis=1
            )
        return tokens_BxK, probs_BxKxV, EagleState(cache=cache, true_lengths=true_lengths_B)

    def propose_tree(
        self,
        params: HeadParams,
        state: EagleState,
        context: DraftContext,
        tree: AnyTreeSpec,
        sampling: sampling_lib.Sampling,
        rng: jax.Array,
    ) -> tuple[DraftTree, EagleState]:
        """A static or dynamic token tree (see `tree_expansion`) drafted by the head.

        A tree node x at depth d continues the sequence at position L - 1 + d; its entry pairs
        its parent's predicted feature (the root's: the caught-up f̂_{L-1}) with x, at position
        L - 2 + d, and predicts x's own feature, whose LM-head logits give x's children. Entries
        of one call see the true entries [0, L - 1) and their own path (the ancestor mask);
        they are not kept in the cache.
        """
        L_B = context.seq_lengths
        # At most D + 1 entries became verifiable since the last call.
        root_feature_BxD, cache = self._catch_up_newest(params, state, context, tree.depth + 1)
        io = params["io"]
        # Over a draft vocabulary, expansion ranks the Vd columns themselves (no [.., V] array)
        # unless a sampled static tree needs the distribution over V for the rejection rule.
        columns = sampling.greedy or isinstance(drafters_tree(tree), DynamicTreeSpec)
        column_ids = io.get("draft_ids") if columns else None
        logits_fn = vocab_logits if column_ids is not None else draft_logits

        def node_logits(nodes: tree_expansion.FedNodes, parent_features_BxPxD, newest: int):
            # Level-1 nodes read the root's feature; deeper ones their parent's prediction
            # from the previous call (parents precede children, so the index is < P).
            features_BxFxD = jnp.broadcast_to(
                root_feature_BxD[:, None], nodes.tokens.shape + root_feature_BxD.shape[-1:]
            )
            if parent_features_BxPxD is not None:
                gathered_BxFxD = per_row(parent_features_BxPxD, jnp.maximum(nodes.parents, 0))
                features_BxFxD = jnp.where(
                    nodes.parents[..., None] >= 0, gathered_BxFxD, features_BxFxD
                )
            positions_BxF = L_B[:, None] - 2 + nodes.depths
            mask_BxFxS = kv_cache.attention_mask(
                cache.lengths, positions_BxF, cache.max_len, extra_mask_BxTxT=nodes.mask
            )
            out_BxFxD, _ = self.apply(
                params, features_BxFxD, nodes.tokens, positions_BxF, cache, mask_BxFxS
            )
            # Only the newest level's logits are used: the others are not projected.
            return logits_fn(io, out_BxFxD[:, -newest:], self.target_config), out_BxFxD

        root_logits_BxC = logits_fn(io, root_feature_BxD, self.target_config)
        drafted = tree_expansion.expand(
            root_logits_BxC, node_logits, tree, sampling, rng, column_ids=column_ids
        )
        return drafted, EagleState(cache=cache, true_lengths=L_B - 1)

    def update(self, params, state, context, num_kept):
        # Catch-up happens at the next `propose` (it knows the new seq_lengths).
        del params, context, num_kept
        return state


HeadDrafter = EagleDrafter | MedusaDrafter


# --------------------------------------------------------------------------------------------
# Construction, saving and loading.


def init_medusa(
    target: Model,
    target_params: Params,
    *,
    num_heads: int = 4,
    seed: int = 0,
    param_dtype=jnp.float32,
) -> tuple[MedusaDrafter, HeadParams]:
    """Untrained Medusa heads (each repeats the target's next-token guess) for `target`."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    module = MedusaHeads(
        target.config.d_model, num_heads, rngs=nnx.Rngs(seed), param_dtype=param_dtype
    )
    graphdef, state = nnx.split(module)
    drafter = MedusaDrafter(graphdef=graphdef, target_config=target.config, num_heads=num_heads)
    return drafter, {"head": nnx.to_pure_dict(state), "io": target_io(target_params)}


def init_eagle(
    target: Model,
    target_params: Params,
    *,
    ffn_dim: int | None = None,
    seed: int = 0,
    param_dtype=jnp.float32,
    feature_layers: Sequence[int] = (),
) -> tuple[EagleDrafter, HeadParams]:
    """An untrained EAGLE head for `target` (random fc and layer); with `feature_layers`, an
    EAGLE-3 head reading those target layers' outputs beside the last hidden state."""
    feature_layers = tuple(int(l) for l in feature_layers)
    check_feature_layers(feature_layers, target.config.num_layers)
    block_config = eagle_block_config(target.config, ffn_dim)
    width = hidden_width(target.config, feature_layers) if feature_layers else 0
    module = EagleHead(
        block_config, rngs=nnx.Rngs(seed), param_dtype=param_dtype, feature_width=width
    )
    graphdef, state = nnx.split(module)
    drafter = EagleDrafter(
        graphdef=graphdef, target_config=target.config, block_config=block_config,
        feature_layers=feature_layers,
    )  # fmt: skip
    return drafter, {"head": nnx.to_pure_dict(state), "io": target_io(target_params)}


def widen_to_feature_layers(
    drafter: EagleDrafter, params: HeadParams, feature_layers: Sequence[int]
) -> tuple[EagleDrafter, HeadParams]:
    """An EAGLE-1 head (D-wide features) as an EAGLE-3-input head reading `feature_layers`
    beside the last hidden state, drafting exactly as before: its new `fuse` layer passes the
    last D of the [(n + 1) D] features (the last hidden state, `last_hidden`) through
    unchanged and reads nothing of the layers' outputs (zero rows there, zero bias). Training
    then starts from the EAGLE-1 head (`head.init_from` of an EAGLE-1 export) and learns what
    the other layers add; the fc and decoder layer are the EAGLE-1 head's own."""
    if drafter.feature_layers:
        raise ValueError(
            f"the head already reads feature layers {list(drafter.feature_layers)}; only an "
            "EAGLE-1 head (the last hidden state alone) is widened"
        )
    feature_layers = tuple(int(l) for l in feature_layers)
    target_config = drafter.target_config
    check_feature_layers(feature_layers, target_config.num_layers)
    D, F = target_config.d_model, hidden_width(target_config, feature_layers)
    dtype = params["head"]["fc"]["kernel"].dtype
    module = EagleHead(drafter.block_config, rngs=nnx.Rngs(0), param_dtype=dtype, feature_width=F)
    graphdef, _ = nnx.split(module)
    # Rows [nD, (n + 1) D) of the kernel read the last hidden state: the identity there.
    kernel_FxD = jnp.zeros((F, D), dtype).at[F - D :].set(jnp.eye(D, dtype=dtype))
    fuse = {"kernel": kernel_FxD, "bias": jnp.zeros((D,), dtype)}
    widened = dataclasses.replace(drafter, graphdef=graphdef, feature_layers=feature_layers)
    return widened, {**params, "head": {**params["head"], "fuse": fuse}}


def init_heads(
    kind: str, target: Model, target_params: Params, *, seed: int = 0, **head_config
) -> tuple[HeadDrafter, HeadParams]:
    """`init_eagle` or `init_medusa` by name."""
    if kind == "eagle":
        return init_eagle(target, target_params, seed=seed, **head_config)
    if kind == "medusa":
        return init_medusa(target, target_params, seed=seed, **head_config)
    raise ValueError(f"unknown head kind {kind!r}; expected one of {HEAD_KINDS}")


# Config fields that do not change the target's features or vocabulary (layer_unroll: saved
# by older versions, retired).
_IRRELEVANT_FIELDS = ("layer_unroll", "max_position")


def _architecture(config: ModelConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    for name in _IRRELEVANT_FIELDS:
        fields.pop(name, None)
    return fields


def save_heads(
    directory: str | os.PathLike,
    drafter: HeadDrafter,
    params: HeadParams,
    metadata: dict[str, Any] | None = None,
    token_counts: Any | None = None,
    train_vocab: int = 0,
) -> Path:
    """Saves the trained head only (not the target's embedding it shares) with a heads.json
    naming its kind, its hyperparameters and the target architecture it was trained for, and
    `token_counts` [V] (how often each token occurs in the training answers) when given: the
    ranking `load_heads(draft_vocab=N)` takes its N tokens from. `train_vocab` > 0: the heads
    were trained over the `train_vocab` most frequent of those tokens only (needs the
    counts); `load_heads` then drafts over them unless told otherwise.
    Atomic: written to a temporary sibling, then renamed over `directory`."""
    from specjax.checkpoints.orbax import orbax_save  # late: keeps orbax off the import path
    from specjax.fileio import atomic_directory

    directory = Path(directory).absolute()
    with atomic_directory(directory) as tmp:
        orbax_save(tmp / _PARAMS_DIR, params["head"], force=True)
        spec = {
            "format_version": FORMAT_VERSION,
            "kind": drafter.kind,
            "head_config": drafter.head_config(),
            "param_dtype": str(jax.tree.leaves(params["head"])[0].dtype),
            "target_config": dataclasses.asdict(drafter.target_config),
            "train_vocab": int(train_vocab),
            "metadata": metadata or {},
        }
        if train_vocab and token_counts is None:
            raise ValueError("train_vocab needs the token_counts it was ranked from")
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1, default=str))
        if token_counts is not None:
            counts_V = np.asarray(token_counts, np.int64)
            if counts_V.shape != (drafter.vocab_size,):
                raise ValueError(
                    f"token_counts must be [{drafter.vocab_size}], got {counts_V.shape}"
                )
            np.save(tmp / COUNTS_FILE, counts_V)
    return directory


def is_saved_heads(directory: str | os.PathLike) -> bool:
    return (Path(directory) / SPEC_FILE).is_file()


# --------------------------------------------------------------------------------------------
# Heads by name: a folder of the specjax cache.


def heads_home() -> Path:
    """Where named heads live: <specjax cache>/drafters/<name>/ (the cache of
    `specjax.checkpoints.sources`, $SPECJAX_CACHE or ~/.cache/specjax)."""
    from specjax.checkpoints.sources import cache_dir

    return cache_dir() / "drafters"


def available_heads() -> list[str]:
    """Names of the heads saved under `heads_home()`."""
    home = heads_home()
    return sorted(p.name for p in home.iterdir() if is_saved_heads(p)) if home.is_dir() else []


def publish_heads(directory: str | os.PathLike, name: str) -> Path:
    """Copies heads saved by `save_heads` to `heads_home()/name` (atomically, replacing an
    older copy), so that drafter specs can name them: ``eagle:heads=<name>``."""
    import shutil

    from specjax.fileio import atomic_directory

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a heads name is one plain folder name, got {name!r}")
    if not is_saved_heads(directory):
        raise FileNotFoundError(f"{directory} holds no saved draft heads (no {SPEC_FILE})")
    final = heads_home() / name
    with atomic_directory(final) as tmp:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
    return final


def resolve_heads(name_or_path: str | os.PathLike) -> Path:
    """A heads folder: `name_or_path` itself when it is a folder, else the named heads under
    `heads_home()`; a clear error listing the known names otherwise."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    named = heads_home() / str(name_or_path)
    if "/" not in str(name_or_path) and is_saved_heads(named):
        return named
    known = available_heads()
    hint = (
        f"named heads in {heads_home()}: {', '.join(known)}"
        if known
        else (
            f"no named heads in {heads_home()} yet (experiments/train_draft.py --name=NAME "
            "publishes a trained run's heads there)"
        )
    )
    raise FileNotFoundError(f"no heads folder or named heads {str(name_or_path)!r}; {hint}")


def load_heads(
    directory: str | os.PathLike,
    target: Model,
    target_params: Params,
    *,
    target_sha256: str | None = None,
    draft_vocab: int = 0,
) -> tuple[HeadDrafter, HeadParams]:
    """(drafter, params) of heads saved by `save_heads`, attached to `target`'s embedding.

    `directory` is a folder or a name under `heads_home()` (`resolve_heads`). Fails with a
    message when the heads were trained for another architecture (features of a different
    width or vocabulary would make them meaningless), or, when both are known, for other
    weights of the same architecture (`target_sha256`, the target checkpoint's sha256, against
    the one recorded at training): such heads load and run, but draft from features they
    never saw, so acceptance would be silently low. `draft_vocab` > 0 drafts over the
    `draft_vocab` tokens most frequent in the training answers (`with_draft_vocab`; needs the
    heads' saved token counts). `draft_vocab` = 0 drafts over every token, or, for heads
    trained over a draft vocabulary (heads.json's `train_vocab`), over that vocabulary: the
    logits of the other tokens were never trained (ask for them with draft_vocab = V).
    """
    from specjax.checkpoints.orbax import orbax_restore

    directory = resolve_heads(directory)
    if not is_saved_heads(directory):
        raise FileNotFoundError(f"{directory} holds no saved draft heads (no {SPEC_FILE})")
    spec = json.loads((directory / SPEC_FILE).read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}: heads format version {spec.get('format_version')} is not "
            f"{FORMAT_VERSION}"
        )
    saved_target = dict(spec["target_config"])
    for name in _IRRELEVANT_FIELDS:
        saved_target.pop(name, None)
    if saved_target != _architecture(target.config):
        differing = sorted(
            k for k in saved_target if saved_target[k] != _architecture(target.config).get(k)
        )
        raise ValueError(
            f"{directory}: these {spec['kind']} heads were trained for another target "
            f"architecture (fields differ: {differing})"
        )
    trained_sha = (spec.get("metadata", {}).get("target") or {}).get("sha256")
    if target_sha256 and trained_sha and target_sha256 != trained_sha:
        raise ValueError(
            f"{directory}: these {spec['kind']} heads were trained on the features of the "
            f"checkpoint with sha256 {trained_sha[:12]}…, not of this target "
            f"({target_sha256[:12]}…): same architecture, other weights"
        )
    drafter, abstract = init_heads(
        spec["kind"],
        target,
        target_params,
        param_dtype=jnp.dtype(spec.get("param_dtype", "float32")),
        **spec["head_config"],
    )
    head = orbax_restore(directory / _PARAMS_DIR, abstract["head"])
    params = {"head": head, "io": abstract["io"]}
    draft_vocab = draft_vocab or int(spec.get("train_vocab", 0))
    if draft_vocab:
        params = with_draft_vocab(params, top_tokens(directory, draft_vocab))
    return drafter, params


def trained_vocab(directory: str | os.PathLike) -> int:
    """The draft vocabulary size saved heads were trained over (heads.json's `train_vocab`;
    0: the full vocabulary)."""
    spec = json.loads((resolve_heads(directory) / SPEC_FILE).read_text())
    return int(spec.get("train_vocab", 0))


def top_tokens(directory: str | os.PathLike, count: int) -> np.ndarray:
    """The `count` tokens most frequent in the training answers of saved heads (ties: the
    lower id first)."""
    path = Path(directory) / COUNTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {COUNTS_FILE} (heads saved without token counts), so no draft "
            "vocabulary can be chosen; retrain, or pass token ids to heads.with_draft_vocab"
        )
    return most_frequent(np.load(path), count)


def most_frequent(counts_V: Any, count: int) -> np.ndarray:
    """The ids of the `count` largest counts, increasing (ties: the lower id first): the one
    ranking of a draft vocabulary, for training (`head.train_vocab`) and drafting alike."""
    counts_V = np.asarray(counts_V)
    if not 1 <= count <= counts_V.size:
        raise ValueError(f"draft_vocab must be in [1, {counts_V.size}], got {count}")
    order = np.lexsort((np.arange(counts_V.size), -counts_V))  # by count, then by id
    return np.sort(order[:count])

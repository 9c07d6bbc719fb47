"""Device meshes and the one table that says where every array lives on them.

Dimension legend: L layers, B batch, S cache slots, D width, H query heads, G kv heads,
Dh head dim, F MLP hidden width, V vocab, K draft length, N max_new_tokens.

A mesh has two axes: `data` splits the batch (every data shard decodes its own rows), `model`
splits one model's weights (Megatron-style tensor parallelism: q/k/v projections and the MLP's
gate/up are split by output heads / hidden units, o_proj and down_proj by input, so each layer
needs exactly one all-reduce after attention and one after the MLP, and no weight ever moves).

Every array is described by *logical* axes (`("layers", "embed", "heads")` for a q projection
kernel) and `LOGICAL_AXIS_RULES` maps logical axes to mesh axes. Changing the parallelism
strategy means changing that table, not the model code.

Rules that depend on the model's shape (applied by `ModelLayout`):
  * heads: H % model must be 0 (error otherwise). Heads are flattened head-major in the
    projections (column h * Dh + d), so splitting H * Dh into `model` equal blocks hands every
    shard whole heads.
  * kv heads: in the storage layout, sharded when G % model == 0, else replicated. In the
    decode layout (what generation runs on, `models.layers.LayerParams`) the fused q/k/v
    projection is laid out in `model` column blocks, one per shard; when G < model (Qwen2.5
    0.5B/1.5B, G = 2, at model = 4 or 8) each kv head is repeated model / G times, so every
    shard computes and caches exactly the kv head its own query heads read: attention stays
    local and the cache costs one head per shard. G and model must divide one another
    (error otherwise); see docs/distributed.md.
  * mlp: F % model must be 0 (error otherwise).
  * vocab: sharded when V % model == 0, replicated otherwise (odd vocabularies exist; a
    replicated embedding costs memory, never correctness).
  * batch: B % data must be 0 (`check_batch`, error otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from specjax.cache import KVCache
from specjax.models.config import ModelConfig

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# Norm scales of the decode layout (`models.layers.LayerParams`, `DecodeParams`).
NORM_NAMES = (
    "attn_norm",
    "mlp_norm",
    "q_norm",
    "k_norm",
    "post_attn_norm",
    "post_mlp_norm",
    "final_norm",
)

# Logical axis -> mesh axis (None: replicated). The one table; see the module docstring for the
# shape-dependent fallbacks of kv_heads and vocab.
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": DATA,
    "heads": MODEL,
    "kv_heads": MODEL,
    "fused_heads": MODEL,  # decode layout: shard-major q/k/v column blocks
    "cached_kv_heads": MODEL,  # C = G * kv_repeat, always a multiple of `model`
    "mlp": MODEL,
    "vocab": MODEL,
    "embed": None,
    "layers": None,
    "head_dim": None,
    "seq": None,
    "norm": None,
    "draft": None,
}

# Parameter name (last one or two keys of its path) -> logical axes of its trailing dims.
# Storage layout: parameters under "blocks" carry a leading stacked "layers" axis (see
# models/transformer.py). Decode layout (`DecodeParams`): one tree per layer, fused q/k/v and
# gate/up columns in shard-major blocks, so an even split over `model` is the right one.
PARAM_LOGICAL_AXES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("embedder", "embedding"): ("vocab", "embed"),  # [V, D]
    ("lm_head", "kernel"): ("embed", "vocab"),  # [D, V]
    ("q_proj", "kernel"): ("embed", "heads"),  # [D, H*Dh]
    ("q_proj", "bias"): ("heads",),  # [H*Dh]
    ("k_proj", "kernel"): ("embed", "kv_heads"),  # [D, G*Dh]
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "kernel"): ("heads", "embed"),  # [H*Dh, D]: row-parallel, all-reduce after
    ("gate_proj", "kernel"): ("embed", "mlp"),  # [D, F]
    ("up_proj", "kernel"): ("embed", "mlp"),  # [D, F]
    ("down_proj", "kernel"): ("mlp", "embed"),  # [F, D]: row-parallel, all-reduce after
    ("scale",): ("norm",),  # RMSNorm scales [D] or [Dh]
    # Decode layout.
    ("embedding",): ("vocab", "embed"),  # [V, D]
    ("lm_head",): ("embed", "vocab"),  # [D, V]
    ("qkv",): ("embed", "fused_heads"),  # [D, N * (H/N + 2 C/N) * Dh]
    ("qkv_bias",): ("fused_heads",),
    ("o",): ("heads", "embed"),  # [H*Dh, D]: row-parallel
    ("gate_up",): ("embed", "mlp"),  # [D, N * 2 * F/N]
    ("down",): ("mlp", "embed"),  # [F, D]: row-parallel
    **{(norm,): ("norm",) for norm in NORM_NAMES},
}

KV_CACHE_LOGICAL_AXES = ("batch", "seq", "cached_kv_heads", "head_dim")  # per layer [B, S, C, Dh]


class MeshError(ValueError):
    """A mesh that does not fit the devices, the model or the batch."""


def make_mesh(data: int, model: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh over the first data * model devices.

    `model` is the minor axis: on GPUs and TPUs neighbouring devices (same host, fastest links)
    land in one tensor-parallel group, where the per-layer all-reduces happen; `data` spans
    hosts, where only the loop's stop condition communicates.
    """
    for name, size in (("data", data), ("model", model)):
        if not isinstance(size, int | np.integer) or size < 1:
            raise MeshError(f"mesh axis {name!r} must be a positive integer, got {size!r}")
    devices = list(jax.devices() if devices is None else devices)
    needed = data * model
    if needed > len(devices):
        raise MeshError(
            f"mesh data={data} x model={model} needs {needed} devices but only {len(devices)} "
            f"are available ({devices[0].platform if devices else 'none'}); on CPU, fake more "
            "with XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax"
        )
    if needed == len(devices):
        # Topology-aware order (TPU ICI rings, GPU NVLink islands) when the mesh takes all.
        device_grid = mesh_utils.create_device_mesh((data, model), devices)
    else:
        device_grid = np.asarray(devices[:needed]).reshape(data, model)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_shape(mesh: Mesh) -> tuple[int, int]:
    """(data, model) sizes of a specjax mesh."""
    if tuple(mesh.axis_names) != MESH_AXES:
        raise MeshError(f"expected a mesh with axes {MESH_AXES}, got {tuple(mesh.axis_names)}")
    return mesh.shape[DATA], mesh.shape[MODEL]


def check_batch(mesh: Mesh, batch_size: int) -> None:
    """Batch rows are split evenly over `data`."""
    data, _ = mesh_shape(mesh)
    if batch_size % data:
        raise MeshError(
            f"batch of {batch_size} rows is not divisible by the mesh's data axis ({data}): "
            f"use a batch that is a multiple of {data}, or a mesh with data dividing "
            f"{batch_size}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading batch axis on `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA, *([None] * (ndim - 1))))


def _param_name(path: tuple[Any, ...]) -> tuple[str, ...]:
    """The string keys of a pytree path (drops NNX's trailing `.value` attribute)."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            names.append(key.name)
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """Where one model's weights and KV cache live on a mesh (hashable: a static jit arg).

    Fields:
      mesh: a `make_mesh` mesh.
      config: the model's architecture (decides the shape-dependent rules).
      tensor_parallel: split the weights over `model` (the target); False replicates them on
        every device (the usual choice for a small drafter, whose per-layer all-reduces would
        cost more than its matmuls). The batch is split over `data` either way.
    """

    mesh: Mesh
    config: ModelConfig
    tensor_parallel: bool = True

    def __post_init__(self):
        _, model = mesh_shape(self.mesh)
        cfg = self.config
        if not self.tensor_parallel or model == 1:
            return
        if cfg.num_heads % model:
            raise MeshError(
                f"{cfg.num_heads} attention heads are not divisible by the mesh's model axis "
                f"({model}): tensor parallelism splits whole heads; use model in "
                f"{_divisors(cfg.num_heads)}"
            )
        if cfg.ffn_dim % model:
            raise MeshError(
                f"MLP width {cfg.ffn_dim} is not divisible by the mesh's model axis ({model}); "
                f"use model in {_divisors(cfg.ffn_dim)}"
            )
        if cfg.num_kv_heads % model and model % cfg.num_kv_heads:
            raise MeshError(
                f"{cfg.num_kv_heads} kv heads and the mesh's model axis ({model}) must divide "
                "one another (each shard caches whole kv heads, repeated when there are fewer "
                f"heads than shards); use model in {allowed_model_sizes(cfg, cfg.num_heads)}"
            )

    @property
    def model_size(self) -> int:
        return self.mesh.shape[MODEL]

    @property
    def shards(self) -> int:
        """Tensor-parallel degree of the decode layout: `model` when splitting, else 1."""
        return self.model_size if self.tensor_parallel else 1

    @property
    def kv_heads_sharded(self) -> bool:
        """True when the storage layout's kv heads are split over `model` (G % model == 0,
        model > 1); False means its k/v projections are replicated over `model`. (The decode
        layout and the KV cache always split their C cached kv heads, see `shards`.)"""
        return (
            self.tensor_parallel
            and self.model_size > 1
            and self.config.num_kv_heads % self.model_size == 0
        )

    @property
    def vocab_sharded(self) -> bool:
        return self.tensor_parallel and self.config.vocab_size % self.model_size == 0

    def mesh_axis(self, logical: str | None) -> str | None:
        """The rules table, plus this model's shape-dependent fallbacks."""
        if logical is None:
            return None
        if logical not in LOGICAL_AXIS_RULES:
            raise KeyError(f"no rule for logical axis {logical!r} in LOGICAL_AXIS_RULES")
        axis = LOGICAL_AXIS_RULES[logical]
        if axis == MODEL:
            if not self.tensor_parallel or self.model_size == 1:
                return None
            if logical == "kv_heads" and not self.kv_heads_sharded:
                return None
            if logical == "vocab" and not self.vocab_sharded:
                return None
        return axis

    def spec(self, logical_axes: Sequence[str | None]) -> P:
        return P(*(self.mesh_axis(name) for name in logical_axes))

    def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes))

    def param_logical_axes(self, path: tuple[Any, ...], ndim: int) -> tuple[str, ...]:
        names = _param_name(path)
        axes = PARAM_LOGICAL_AXES.get(names[-2:]) or PARAM_LOGICAL_AXES.get(names[-1:])
        if axes is None:
            raise KeyError(
                f"no sharding rule for parameter {'/'.join(names)}: add its logical axes to "
                "specjax.parallel.mesh.PARAM_LOGICAL_AXES"
            )
        if "blocks" in names:
            axes = ("layers", *axes)
        if len(axes) != ndim:
            raise ValueError(f"parameter {'/'.join(names)} has {ndim} dims, rule gives {axes}")
        return axes

    def param_shardings(self, params: Any) -> Any:
        """NamedSharding per parameter leaf (same pytree structure as `params`; the leaves may
        be arrays or `jax.ShapeDtypeStruct`s, e.g. from `abstract_model`)."""

        def leaf_sharding(path, leaf):
            return self.sharding(self.param_logical_axes(path, len(np.shape(leaf))))

        return jax.tree_util.tree_map_with_path(leaf_sharding, params)

    def cache_shardings(self) -> KVCache:
        """KVCache of NamedShardings: per layer k/v [B, S, C, Dh] (rows on `data`, the C cached
        kv heads on `model` when tensor parallel), lengths [B]."""
        kv = self.sharding(KV_CACHE_LOGICAL_AXES)
        layers = (kv,) * self.config.num_layers
        return KVCache(k=layers, v=layers, lengths=self.sharding(("batch",)))

    def logits_sharding(self) -> NamedSharding:
        """[B, T, V]: rows on `data`, the vocabulary where the LM head put it."""
        return self.sharding(("batch", "seq", "vocab"))

    def hidden_sharding(self) -> NamedSharding:
        return self.sharding(("batch", "seq", "embed"))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def allowed_model_sizes(config: ModelConfig, num_devices: int) -> list[int]:
    """Tensor-parallel sizes <= num_devices that `ModelLayout` accepts for this shape."""
    G = config.num_kv_heads
    return [
        m
        for m in range(1, num_devices + 1)
        if config.num_heads % m == 0
        and config.ffn_dim % m == 0
        and num_devices % m == 0
        and (G % m == 0 or m % G == 0)
    ]

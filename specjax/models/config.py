"""Model configuration: one frozen, hashable dataclass for every supported family.

The decoder in `transformer.py` is a single implementation; the families differ only in the
fields below. Because the config is frozen and hashable it can be a static argument of
`jax.jit`: two models with equal configs share one compiled program.

Dimension legend: V vocab, D width (d_model), H query heads, G kv heads, Dh head dim,
F MLP hidden width, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Family = Literal["llama", "qwen2", "gemma3"]
RopeLayout = Literal["half", "interleaved"]
Activation = Literal["silu", "gelu_tanh"]

# Sliding-window value meaning "no window": attention reaches the whole cache.
NO_WINDOW = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer.

    Fields:
      family: "llama" (SmolLM2, Llama), "qwen2" (q/k/v biases) or "gemma3" (sliding-window
        layers, q/k norms, post norms, scaled embeddings, GELU).
      vocab_size: V.  num_layers: L.  d_model: D.  num_heads: H.  num_kv_heads: G (H % G == 0).
      head_dim: Dh (not necessarily D // H: Gemma3-270M has D=640, H=4, Dh=256).
      ffn_dim: F, hidden width of the gated MLP.
      rope_theta: RoPE base of global layers; rope_local_theta: base of sliding-window layers
        (Gemma3 uses 10k locally, 1M globally); None means same as rope_theta.
      rope_layout: "half" rotates the two halves of each head (NEOX/HF layout); "interleaved"
        rotates adjacent pairs (GPT-J / original Llama layout).
      qkv_bias: q/k/v projections have biases (Qwen2).
      qk_norm: RMSNorm over each head of q and k before RoPE (Gemma3).
      post_norms: extra RMSNorm on the attention and MLP outputs before the residual (Gemma3).
      embed_scale: multiply embeddings by sqrt(D) (Gemma).
      tie_embeddings: LM head is the transposed embedding matrix.
      activation: gate activation of the MLP.
      norm_eps: RMSNorm epsilon.
      sliding_window: window length W of local layers (NO_WINDOW = global everywhere).
      sliding_window_pattern: every `pattern`-th layer (1-based) is global, the others local
        (Gemma3: 6 -> five local, one global). 0 = all layers use `sliding_window`.
      query_pre_attn_scalar: attention scores are scaled by this ** -0.5 (default Dh).
      final_logit_softcap: tanh soft-capping of the logits (None = off).
      max_position: longest context the model was trained for. `specjax.generate` refuses a
        prompt plus budget beyond it (the cache size itself is chosen per generation).
    """

    family: Family = "llama"
    vocab_size: int = 256
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 128
    rope_theta: float = 10_000.0
    rope_local_theta: float | None = None
    rope_layout: RopeLayout = "half"
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: bool = False
    tie_embeddings: bool = True
    activation: Activation = "silu"
    norm_eps: float = 1e-6
    sliding_window: int = NO_WINDOW
    sliding_window_pattern: int = 0
    query_pre_attn_scalar: float | None = None
    final_logit_softcap: float | None = None
    max_position: int = 8192

    def __post_init__(self):
        checks = [
            (self.family in ("llama", "qwen2", "gemma3"), f"unknown family {self.family!r}"),
            (self.vocab_size >= 2, f"vocab_size must be >= 2, got {self.vocab_size}"),
            (self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}"),
            (self.num_heads >= 1 and self.num_kv_heads >= 1, "need at least one head"),
            (
                self.num_heads % self.num_kv_heads == 0,
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})",
            ),
            (
                self.rope_layout in ("half", "interleaved"),
                f"unknown rope_layout {self.rope_layout!r}",
            ),
            (self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}"),
            (self.activation in ("silu", "gelu_tanh"), f"unknown activation {self.activation!r}"),
            (self.sliding_window >= 0, "sliding_window must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelConfig: {message}")

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    def layer_windows(self) -> tuple[int, ...]:
        """Sliding window per layer (NO_WINDOW = global attention)."""
        if self.sliding_window == NO_WINDOW:
            return (NO_WINDOW,) * self.num_layers
        if self.sliding_window_pattern == 0:
            return (self.sliding_window,) * self.num_layers
        pattern = self.sliding_window_pattern
        return tuple(
            NO_WINDOW if (layer + 1) % pattern == 0 else self.sliding_window
            for layer in range(self.num_layers)
        )

    def layer_rope_thetas(self) -> tuple[float, ...]:
        """RoPE base per layer: local layers may use a different base (Gemma3)."""
        local = self.rope_theta if self.rope_local_theta is None else self.rope_local_theta
        return tuple(
            self.rope_theta if window == NO_WINDOW else local for window in self.layer_windows()
        )

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        D, H, G, Dh, F, V = (
            self.d_model,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.ffn_dim,
            self.vocab_size,
        )
        attn = D * H * Dh + 2 * D * G * Dh + H * Dh * D
        if self.qkv_bias:
            attn += H * Dh + 2 * G * Dh
        if self.qk_norm:
            attn += 2 * Dh
        norms = (4 if self.post_norms else 2) * D
        per_layer = attn + 3 * D * F + norms
        head = 0 if self.tie_embeddings else D * V
        return V * D + self.num_layers * per_layer + D + head


# Shapes of real models (weights come from checkpoints; these are the architectures).
SMOLLM2_135M = ModelConfig(
    family="llama",
    vocab_size=49152,
    num_layers=30,
    d_model=576,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    ffn_dim=1536,
    rope_theta=100_000.0,
    norm_eps=1e-5,
    tie_embeddings=True,
)

QWEN25_05B = ModelConfig(
    family="qwen2",
    vocab_size=151936,
    num_layers=24,
    d_model=896,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    ffn_dim=4864,
    rope_theta=1_000_000.0,
    qkv_bias=True,
    norm_eps=1e-6,
    # HF's 0.5B and 1.5B tie their embeddings (494M / 1.54B parameters); the GGUF re-exports
    # used here carry a separate output.weight, which the loader reads from the file.
    tie_embeddings=True,
)

QWEN25_15B = QWEN25_05B.replace(
    num_layers=28, d_model=1536, num_heads=12, num_kv_heads=2, head_dim=128, ffn_dim=8960
)

QWEN25_7B = QWEN25_05B.replace(
    vocab_size=152064,
    num_layers=28,
    d_model=3584,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    ffn_dim=18944,
    tie_embeddings=False,
)

LLAMA3_8B = ModelConfig(
    family="llama",
    vocab_size=128256,
    num_layers=32,
    d_model=4096,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    ffn_dim=14336,
    rope_theta=500_000.0,
    norm_eps=1e-5,
    tie_embeddings=False,
)

LLAMA3_70B = LLAMA3_8B.replace(
    num_layers=80, d_model=8192, num_heads=64, num_kv_heads=8, ffn_dim=28672
)

GEMMA3_270M = ModelConfig(
    family="gemma3",
    vocab_size=262144,
    num_layers=18,
    d_model=640,
    num_heads=4,
    num_kv_heads=1,
    head_dim=256,
    ffn_dim=2048,
    rope_theta=1_000_000.0,
    rope_local_theta=10_000.0,
    qk_norm=True,
    post_norms=True,
    embed_scale=True,
    activation="gelu_tanh",
    sliding_window=512,
    sliding_window_pattern=6,
    query_pre_attn_scalar=256.0,
    tie_embeddings=True,
    norm_eps=1e-6,
)

KNOWN_SHAPES = {
    "smollm2-135m": SMOLLM2_135M,
    "qwen2.5-0.5b": QWEN25_05B,
    "qwen2.5-1.5b": QWEN25_15B,
    "qwen2.5-7b": QWEN25_7B,
    "llama3-8b": LLAMA3_8B,
    "llama3-70b": LLAMA3_70B,
    "gemma3-270m": GEMMA3_270M,
}

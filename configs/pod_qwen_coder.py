"""Qwen2.5-Coder-1.5B-Instruct drafted by Qwen2.5-Coder-0.5B-Instruct on a TPU pod slice:
HumanEval at scale, every chip (or pair of chips) one replica of the pair.

UNTESTED ON A POD (none is reachable from where specjax is developed). What was run: the same
code path (experiments/launch_multihost.py -> specjax.experiment -> specjax.generate(mesh=))
with two CPU processes on one machine, and every mesh shape on 8 fake CPU devices.

Every worker of the slice runs the same command (JAX finds the other workers itself):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="
      cd specjax && python -m experiments.launch_multihost \\
        --config=configs/pod_qwen_coder.py:slice=v5litepod-16 --workdir=/tmp/pod_qwen"

    # a sweep point by hand: two-chip tensor parallelism, gamma 5
    ... --config=configs/pod_qwen_coder.py:slice=v5litepod-16,tp=2,gamma=5 ...

arg: experiment keys of specjax.eval.experiment.base_config (gamma=5,max_new_tokens=512,...) and
three keys of this file:
  slice=<accelerator type>  sets the device count (SLICE_CHIPS; JAX sees one device per chip)
  tp=<1|2|4>                tensor-parallel size (mesh.model); mesh.data = chips / tp
  rows=<n>                  prompts decoded at once per replica (batch = rows x mesh.data)

Why these choices: the pair is small (1.5B + 0.5B parameters, ~4 GB in bfloat16), so one chip
holds both and data parallelism gives the most throughput; tp=2 / tp=4 exist to measure what
tensor parallelism costs and buys at this size (Qwen2.5-1.5B has 12 heads, so tp must divide
12, and 2 kv heads: at tp=4 the kv projections and cache are replicated, see
docs/distributed.md). The draft is replicated on every chip of a replica (its all-reduces
would cost more than its matmuls). Greedy decoding, so every replica's output is checked
against autoregressive decoding token for token by the runner.
"""

from specjax import experiment

# Accelerator type -> chips (JAX devices). v4 and v5p count TensorCores (2 per chip, one
# megacore device per chip); v5litepod and v6e count chips.
SLICE_CHIPS = {
    "v4-8": 4,
    "v4-16": 8,
    "v4-32": 16,
    "v5litepod-8": 8,
    "v5litepod-16": 16,
    "v5litepod-32": 32,
    "v5p-8": 4,
    "v5p-16": 8,
    "v5p-32": 16,
    "v6e-8": 8,
    "v6e-16": 16,
}
DEFAULTS = {"slice": "v5litepod-16", "tp": "1", "rows": "8"}


def _split_arg(arg: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(this file's keys, the experiment's keys) of a "k=v,..." argument."""
    pairs = experiment.parse_arg(arg)
    own = {**DEFAULTS, **{k: pairs.pop(k) for k in list(pairs) if k in DEFAULTS}}
    if own["slice"] not in SLICE_CHIPS:
        raise experiment.ConfigError(
            f"slice={own['slice']!r} unknown; known: {', '.join(SLICE_CHIPS)}"
        )
    return own, pairs


def _mesh_keys(own: dict[str, str]) -> dict[str, int]:
    chips, tp, rows = SLICE_CHIPS[own["slice"]], int(own["tp"]), int(own["rows"])
    if tp not in (1, 2, 4) or chips % tp:
        raise experiment.ConfigError(
            f"tp={tp}: Qwen2.5-1.5B splits over 1, 2 or 4 chips (12 heads), dividing {chips}"
        )
    data = chips // tp
    return {"mesh.data": data, "mesh.model": tp, "batch_size": rows * data}


def get_config(arg: str | None = None):
    own, overrides = _split_arg(arg)
    config = experiment.base_config()
    config.label = f"Qwen2.5-Coder 1.5B / 0.5B, {own['slice']}, tp={own['tp']}"
    config.target = "qwen2.5-coder-1.5b-instruct"
    config.drafter.kind = "model"
    config.drafter.model = "qwen2.5-coder-0.5b-instruct"
    config.gamma = 4
    config.sampling.temperature = 0.0
    config.prompts.name = "humaneval"
    config.prompts.subset = 0  # all 164 problems
    config.prompts.chat_template = True
    config.max_new_tokens = 256
    config.stop_at_eos = True
    config.dtype = "bfloat16"
    config.repeats = 2
    config.measure_c = False  # single-device step costs say nothing about a sharded step
    return experiment.finalize(config, {**_mesh_keys(own), **overrides})


def get_sweep(arg: str | None = None) -> list[dict]:
    """gamma 3 and 5, each with data parallelism alone and with tensor-parallel pairs."""
    own, _ = _split_arg(arg)
    points = []
    for tp in ("1", "2"):
        for gamma in (3, 5):
            points.append({**_mesh_keys({**own, "tp": tp}), "gamma": gamma})
    return points


def get_distributed(arg: str | None = None) -> dict:
    """Multi-host settings (read by experiments/launch_multihost.py): on a TPU pod slice JAX
    detects the workers and the coordinator itself."""
    del arg
    return {"auto": True}

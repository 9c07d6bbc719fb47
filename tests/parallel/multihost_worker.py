"""One process of the two-process CPU test (tests/parallel/test_distributed.py).

Run as a script with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID set. Every
process runs this same file (as on a TPU pod slice): it joins the job, builds one (data, model)
mesh over the devices of both processes, generates with a tiny model sharded over that mesh,
and also without a mesh on its own first device, and prints one JSON line with both results.
"""

import json
import os
import sys

# Two fake CPU devices per process; must be set before jax is imported. LLVM optimisation
# off: the test's time is compile time, the programs are tiny.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
    "--xla_cpu_use_fusion_emitters=false"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from specjax.parallel import distributed  # noqa: E402


def main() -> None:
    settings = distributed.initialize()  # from the JAX_* environment variables
    import specjax
    from specjax.models.config import ModelConfig
    from specjax.parallel import make_mesh

    jax.config.update("jax_default_matmul_precision", "highest")
    config = ModelConfig(
        vocab_size=64, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
        ffn_dim=64,
    )  # fmt: skip
    target = specjax.init_model(config, seed=3)  # same seed: identical weights everywhere
    prompts = [[5, 17, 3], [9, 1, 2, 7, 30], [44], [12, 60, 7, 7]]
    mesh = make_mesh(data=2, model=2)  # data axis across the two processes
    sharded = specjax.generate(target, None, prompts, max_new_tokens=6, mesh=mesh)
    local = specjax.generate(target, None, prompts, max_new_tokens=6)
    print(
        json.dumps(
            dict(
                process_id=settings.process_id,
                process_count=jax.process_count(),
                global_devices=jax.device_count(),
                local_devices=jax.local_device_count(),
                mesh_processes=sorted({d.process_index for d in mesh.devices.flat}),
                sharded=sharded.token_lists(),
                local=local.token_lists(),
                steps=int(np.asarray(sharded.steps)),
            )
        ),
        flush=True,
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())

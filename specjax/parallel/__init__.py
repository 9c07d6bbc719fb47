"""Meshes, shardings and multi-host start-up (see docs/distributed.md).

mesh = specjax.parallel.make_mesh(data=2, model=4)
out = specjax.generate(target, draft, prompts, mesh=mesh)
"""

from specjax.parallel.mesh import (
    LOGICAL_AXIS_RULES,
    MESH_AXES,
    PARAM_LOGICAL_AXES,
    MeshError,
    ModelLayout,
    allowed_model_sizes,
    check_batch,
    make_mesh,
)
from specjax.parallel.sharded import ShardedModel, shard_model

__all__ = [
    "LOGICAL_AXIS_RULES",
    "MESH_AXES",
    "PARAM_LOGICAL_AXES",
    "MeshError",
    "ModelLayout",
    "ShardedModel",
    "allowed_model_sizes",
    "check_batch",
    "make_mesh",
    "shard_model",
]

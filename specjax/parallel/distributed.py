"""Multi-process start-up: `jax.distributed.initialize()` driven by a config or the environment.

Dimension legend: none (this module starts processes talking; it moves no tensors).

JAX runs one process per host (TPU pod slice, multi-node GPU) or per GPU. Every process runs
the *same program*; after `initialize`, `jax.devices()` lists the devices of all processes and
one `Mesh` spans them. Where the settings come from, first match wins:

  1. explicit arguments / a config (`config.distributed` of an experiment, or a mapping) with
     fields coordinator_address ("host:port" of process 0), num_processes, process_id,
     local_device_ids, auto (bool);
  2. environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
     JAX_LOCAL_DEVICE_IDS (comma-separated) and SPECJAX_DISTRIBUTED_AUTO=1;
  3. nothing: a single process, and `initialize` does nothing.

`auto` (no address given) calls `jax.distributed.initialize()` without arguments: JAX then
detects the cluster itself (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes). That is the
setting for TPU pods, where every worker runs the identical command.

Call `initialize` before anything touches a device (creating arrays, `jax.devices()`): the
backend is fixed at first use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"
ENV_AUTO = "SPECJAX_DISTRIBUTED_AUTO"


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """Resolved settings (None = not given).

    Fields:
      coordinator_address: "host:port" of process 0's coordination service.
      num_processes: processes in the job.
      process_id: this process's index in [0, num_processes).
      local_device_ids: the devices this process drives (e.g. one GPU per process).
      auto: let JAX detect the cluster (TPU pod, SLURM, Open MPI, Kubernetes).
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    auto: bool = False

    @property
    def multi_process(self) -> bool:
        if self.num_processes is not None:
            return self.num_processes > 1
        return self.auto or self.coordinator_address is not None


def _get(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"distributed setting {name} must be an integer, got {value!r}") from None


def _device_ids(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return tuple(int(part) for part in value.split(",") if part.strip())
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "auto")
    return bool(value)


def resolve(config: Any = None, environ: Mapping[str, str] | None = None) -> DistributedSettings:
    """Settings from `config` (a mapping, ConfigDict or object; a `.distributed` sub-config is
    used when present), falling back field by field to the environment."""
    environ = os.environ if environ is None else environ
    if _get(config, "distributed") is not None:
        config = _get(config, "distributed")

    def pick(name: str, env_name: str) -> Any:
        value = _get(config, name)
        return environ.get(env_name) if value is None else value

    settings = DistributedSettings(
        coordinator_address=pick("coordinator_address", ENV_COORDINATOR) or None,
        num_processes=_int_or_none(pick("num_processes", ENV_NUM_PROCESSES), "num_processes"),
        process_id=_int_or_none(pick("process_id", ENV_PROCESS_ID), "process_id"),
        local_device_ids=_device_ids(pick("local_device_ids", ENV_LOCAL_DEVICE_IDS)),
        auto=_truthy(pick("auto", ENV_AUTO) or False),
    )
    n, i = settings.num_processes, settings.process_id
    if n is not None and n < 1:
        raise ValueError(f"num_processes must be >= 1, got {n}")
    if n is not None and i is not None and not 0 <= i < n:
        raise ValueError(f"process_id {i} is outside [0, num_processes={n})")
    if not settings.auto and n is not None and n > 1:
        missing = [
            name
            for name, value in (
                ("coordinator_address", settings.coordinator_address),
                ("process_id", i),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"num_processes={n} but {', '.join(missing)} not given (config or "
                f"{ENV_COORDINATOR} / {ENV_PROCESS_ID}); or set auto=True to let JAX detect "
                "the cluster"
            )
    return settings


def initialize(
    config: Any = None, *, environ: Mapping[str, str] | None = None
) -> DistributedSettings:
    """Starts JAX's multi-process runtime if the settings ask for it; a no-op otherwise.

    Safe to call twice (the second call does nothing). Returns the resolved settings.
    """
    settings = resolve(config, environ)
    if not settings.multi_process or jax.distributed.is_initialized():
        return settings
    if settings.auto and settings.coordinator_address is None:
        # Cluster auto-detection: TPU pod slices, SLURM, Open MPI, Kubernetes.
        jax.distributed.initialize(local_device_ids=settings.local_device_ids)
    else:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=settings.local_device_ids,
        )
    return settings


def describe() -> str:
    """One line: this process, all processes, local and global devices."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.devices()[0].platform} devices"
    )

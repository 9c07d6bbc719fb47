"""Run one experiment config as a multi-process JAX job (TPU pod slices, multi-GPU hosts).

Every process runs this same command. It joins the job (`specjax.parallel.distributed`),
then runs the experiment (specjax/eval/experiment.py) with the config's (data, model) mesh over
the devices of *all* processes. Process 0 writes --workdir; process i > 0 writes
--workdir/process_<i> (same results; kept apart so that a shared file system sees no clobbering).

TPU pod slice, e.g. v5e-16 (4 hosts x 4 chips): JAX finds the other workers itself.
    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="
      cd specjax && python -m experiments.launch_multihost \\
        --config=configs/pod_qwen_coder.py:slice=v5e-16 --workdir=/tmp/pod_qwen"

Several GPU hosts (one process per host, each driving its local GPUs):
    JAX_COORDINATOR_ADDRESS=host0:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0 or 1> \\
      python -m experiments.launch_multihost --config=... --workdir=...

One host, one process per GPU (this command starts them, e.g. 2 GPUs):
    python -m experiments.launch_multihost --local_processes=2 --config=... --workdir=...

Where the settings come from (first match wins, field by field): the flags below, the
config file's `get_distributed(arg)` if it defines one, the JAX_* environment variables.
See docs/distributed.md.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from specjax import console

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's files (process 0).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_AUTO = flags.DEFINE_bool("auto", None, "Let JAX detect the cluster (TPU pods, SLURM, MPI).")
_LOCAL_PROCESSES = flags.DEFINE_integer(
    "local_processes", 0, "Start this many processes of this command on this host."
)
_DEVICES_PER_PROCESS = flags.DEFINE_integer(
    "devices_per_process",
    1,
    "With --local_processes on GPUs: devices each process drives (0 = leave to JAX).",
)
_PROGRESS = flags.DEFINE_bool("progress", False, "Show tqdm progress bars.")
flags.mark_flags_as_required(["config", "workdir"])

_CHILD_ENV = "SPECJAX_LAUNCHED_CHILD"


def _config_module_settings() -> dict[str, Any]:
    """`get_distributed(arg)` of the config file, if it defines one."""
    spec = config_flags.get_config_filename(flags.FLAGS["config"])
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get = getattr(module, "get_distributed", None)
    return dict(get(arg or None)) if get else {}


def _settings() -> dict[str, Any]:
    settings = _config_module_settings()
    for name, flag in (
        ("coordinator_address", _COORDINATOR),
        ("num_processes", _NUM_PROCESSES),
        ("process_id", _PROCESS_ID),
        ("auto", _AUTO),
    ):
        if flag.value is not None:
            settings[name] = flag.value
    return settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn_local(n: int) -> int:
    """Starts n copies of this command on this host (process i drives devices
    [i * k, (i + 1) * k) for k = --devices_per_process); returns the worst exit status."""
    port = _free_port()
    argv, skip = [], False
    for arg in sys.argv[1:]:  # drop --local_processes=N / --local_processes N
        if skip:
            skip = False
        elif arg.startswith("--local_processes"):
            skip = "=" not in arg
        else:
            argv.append(arg)
    procs = []
    for i in range(n):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES=str(n),
            JAX_PROCESS_ID=str(i),
            **{_CHILD_ENV: "1"},
        )
        k = _DEVICES_PER_PROCESS.value
        if k > 0:
            env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(i * k + d) for d in range(k))
        procs.append(
            subprocess.Popen([sys.executable, "-m", "experiments.launch_multihost", *argv], env=env)
        )
    return max(p.wait() for p in procs)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _LOCAL_PROCESSES.value > 1 and not os.environ.get(_CHILD_ENV):
        sys.exit(_spawn_local(_LOCAL_PROCESSES.value))

    # Before anything touches a device: the backend is fixed at first use.
    from specjax.parallel import distributed

    try:
        settings = distributed.initialize(_settings())
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    import jax

    from specjax import experiment

    process = jax.process_index()
    print(distributed.describe(), f"(settings: {settings})", flush=True)
    try:
        experiment.validate(_CONFIG.value)
    except experiment.ConfigError as error:
        raise app.UsageError(str(error)) from None
    workdir = _WORKDIR.value if process == 0 else os.path.join(_WORKDIR.value, f"process_{process}")
    result = experiment.run_experiment(_CONFIG.value, workdir, progress=_PROGRESS.value)
    if process == 0:
        print(experiment.report_markdown(result.summaries, title=result.overall.label))
        print(f"\nwrote {result.workdir}")
    if settings.multi_process:
        jax.distributed.shutdown()


if __name__ == "__main__":
    console.run(main)

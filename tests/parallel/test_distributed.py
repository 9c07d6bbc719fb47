"""Multi-process start-up: settings from config / environment, and a real two-process run on
localhost with the CPU backend (gloo collectives), each process driving 2 fake devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from specjax.parallel import distributed

WORKER = Path(__file__).with_name("multihost_worker.py")
REPO = Path(__file__).resolve().parents[2]


def test_resolve_precedence_and_errors():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}
    settings = distributed.resolve({"process_id": 2}, environ=env)
    assert settings == distributed.DistributedSettings("10.0.0.1:1234", 4, 2, None, False)
    assert settings.multi_process
    # A config's `distributed` sub-config wins over the environment, field by field.
    config = {"distributed": {"num_processes": 2, "process_id": 1, "local_device_ids": "0,1"}}
    settings = distributed.resolve(config, environ=env)
    assert (settings.num_processes, settings.local_device_ids) == (2, (0, 1))
    assert settings.coordinator_address == "10.0.0.1:1234"
    # Nothing set: one process, initialize() is a no-op.
    assert not distributed.resolve(None, environ={}).multi_process
    assert distributed.initialize(None, environ={}) == distributed.DistributedSettings()
    assert not distributed.resolve({"num_processes": 1}, environ=env).multi_process
    # TPU pods: auto-detection, nothing else needed.
    assert distributed.resolve(None, environ={"SPECJAX_DISTRIBUTED_AUTO": "1"}).multi_process
    with pytest.raises(ValueError, match=r"num_processes=4 but process_id not given"):
        distributed.resolve(None, environ=env)
    with pytest.raises(ValueError, match=r"process_id 5 is outside \[0, num_processes=4\)"):
        distributed.resolve({"process_id": 5}, environ=env)
    with pytest.raises(ValueError, match=r"num_processes must be an integer"):
        distributed.resolve({"num_processes": "two"}, environ={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost():
    """Both processes join, see 4 global devices, and generate on one (data=2, model=2) mesh
    whose data axis spans the two processes; tokens equal the single-device run."""
    port = _free_port()
    procs = []
    for process_id in range(2):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
            PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("two-process run timed out after 150 s")
        assert proc.returncode == 0, f"worker failed:\n{stderr[-3000:]}"
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for process_id, result in enumerate(results):
        assert result["process_id"] == process_id
        assert (result["process_count"], result["global_devices"]) == (2, 4)
        assert result["local_devices"] == 2
        assert result["mesh_processes"] == [0, 1]
        assert result["sharded"] == result["local"]
    assert results[0]["sharded"] == results[1]["sharded"]

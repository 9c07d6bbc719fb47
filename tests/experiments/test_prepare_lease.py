"""experiments/h200/prepare_lease.py: a model split into per-call part folders, and the plan's
lines, run as written (in a shell with a scratch home), give the file back byte for byte; a
part size whose call would be over the device's 64 MiB is refused before anything is
written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "prepare_lease", REPO / "experiments" / "h200" / "prepare_lease.py"
)
prepare_lease = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(prepare_lease)


def test_the_plan_brings_the_file_back(tmp_path):
    """Every line of the plan is one call: its carry names the manifests and one part, its
    command appends that part; the last one joins, and the joined file is the original."""
    data = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    model = tmp_path / "model.gguf"
    model.write_bytes(data)
    root = tmp_path / "repo"  # the copy of the working tree a call runs in
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "h200").symlink_to(REPO / "experiments" / "h200")
    manifest = prepare_lease.split_model(model, "t", 1000, root / ".xfer")
    assert sorted(p.name for p in (root / ".xfer").iterdir()) == ["man", "t000", "t001", "t002"]
    lines = prepare_lease.plan_lines("t", manifest)
    assert len(lines) == 3
    home = tmp_path / "home"
    home.mkdir()
    for index, line in enumerate(lines):
        carry, command = line.split("\t")
        assert json.loads(carry) == [".xfer/man", f".xfer/t{index:03d}"]
        assert ("join" in command) == (index == 2)
        env = {**os.environ, "HOME": str(home)}
        subprocess.run(["bash", "-c", command], cwd=root, env=env, check=True)
    assert (home / "sc" / "models" / "model.gguf").read_bytes() == data
    assert not (home / "sc" / "incoming_t").exists()


def test_a_part_too_big_for_a_call_is_refused():
    """The twelfth and twenty-first sessions each lost a call to a part that, with the
    tracked tree, was over 64 MiB."""
    tree = 16 * 2**20
    prepare_lease.check_call_size(30_000_000, tree)
    with pytest.raises(SystemExit, match="use --part_size=4"):
        prepare_lease.check_call_size(50_000_000, tree)


def test_the_default_part_is_the_largest_that_fits():
    tree = 17_085_489
    size = prepare_lease.largest_part(tree, 48 * 2**10)
    prepare_lease.check_call_size(size, tree, 48 * 2**10)
    with pytest.raises(SystemExit):
        prepare_lease.check_call_size(size + 1_000_000, tree, 48 * 2**10)


def test_a_head_travels_and_is_published_by_name(tmp_path):
    """A head's folder packed into per-call parts comes out of the plan's lines, as written,
    as ~/sc/drafters/NAME with every file byte for byte; the plan keeps another stream's
    calls when the heads' are written."""
    head = tmp_path / "drafter"
    (head / "params").mkdir(parents=True)
    (head / "heads.json").write_text('{"kind": "eagle"}')
    weights = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (head / "params" / "weights.bin").write_bytes(weights)
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "h200").symlink_to(REPO / "experiments" / "h200")
    xfer = root / ".xfer"
    (tmp_path / "model.gguf").write_bytes(b"x" * 1500)
    model_calls = prepare_lease.plan_lines(
        "t", prepare_lease.split_model(tmp_path / "model.gguf", "t", 1000, xfer)
    )
    prepare_lease.write_plan(xfer / "plan.txt", {"t": model_calls})
    manifest = prepare_lease.pack_head(head, "h", 4096, xfer)
    head_calls = prepare_lease.head_plan_lines("h", manifest, "eagle-test")
    assert prepare_lease.write_plan(xfer / "plan.txt", {"h": head_calls}) == 2 + len(head_calls)
    assert (xfer / "plan.txt").read_text().splitlines() == model_calls + head_calls
    home = tmp_path / "home"
    home.mkdir()
    for line in head_calls:
        command = line.split("\t")[1]
        env = {**os.environ, "HOME": str(home)}
        subprocess.run(["bash", "-c", command], cwd=root, env=env, check=True)
    published = home / "sc" / "drafters" / "eagle-test"
    assert (published / "params" / "weights.bin").read_bytes() == weights
    assert (published / "heads.json").read_text() == '{"kind": "eagle"}'
    assert not (root / "~").exists()  # a ~ after --out= is not expanded by bash
    with pytest.raises(SystemExit, match="no heads.json"):
        prepare_lease.pack_head(tmp_path, "i", 4096, xfer)

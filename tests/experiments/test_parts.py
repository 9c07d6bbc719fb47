"""experiments/h200/parts.py: files split into checked parts and joined again (to a lent
GPU), folders packed into parts and unpacked (back from it); lost, repeated and corrupted
parts are caught."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "parts", Path(__file__).parents[2] / "experiments" / "h200" / "parts.py"
)
parts = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(parts)


def _random_file(path: Path, size: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def test_split_append_join_round_trip(tmp_path):
    """Two files of odd sizes (a part spans the boundary) come back byte for byte; a repeated
    part is skipped; a lost part, a part sent twice out of order and a wrong part are refused."""
    a = _random_file(tmp_path / "a.gguf", 2500, 0)
    b = _random_file(tmp_path / "b.gguf", 1301, 1)
    manifest = parts.split([tmp_path / "a.gguf", tmp_path / "b.gguf"], tmp_path / "out", 1000)
    assert [p["size"] for p in manifest["parts"]] == [1000, 1000, 1000, 801]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    stream = tmp_path / "there" / "incoming"
    part = lambda i: tmp_path / "out" / f"part{i:03d}"  # noqa: E731
    with pytest.raises(ValueError, match="lost or sent twice"):
        parts.append(manifest, 1, part(1), stream)  # part 0 not there yet
    with pytest.raises(ValueError, match="not part 0"):
        parts.append(manifest, 0, part(1), stream)
    parts.append(manifest, 0, part(0), stream)
    assert "already appended" in parts.append(manifest, 0, part(0), stream)
    with pytest.raises(ValueError, match="lost or sent twice"):
        parts.append(manifest, 2, part(2), stream)
    with pytest.raises(ValueError, match="parts are missing"):
        parts.join(manifest, stream, tmp_path / "models")
    for i in (1, 2, 3):
        parts.append(manifest, i, part(i), stream)
    joined = parts.join(manifest, stream, tmp_path / "models")
    assert [p.read_bytes() for p in joined] == [a, b]
    assert not stream.exists()


def test_join_refuses_a_corrupted_stream(tmp_path):
    """A byte flipped in the stream after the parts were checked fails the file's sha256, and
    nothing is moved in place."""
    _random_file(tmp_path / "a.gguf", 3000, 2)
    manifest = parts.split([tmp_path / "a.gguf"], tmp_path / "out", 1024)
    stream = tmp_path / "incoming"
    for i in range(len(manifest["parts"])):
        parts.append(manifest, i, tmp_path / "out" / f"part{i:03d}", stream)
    data = bytearray(stream.read_bytes())
    data[1500] ^= 1
    stream.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 of a.gguf"):
        parts.join(manifest, stream, tmp_path / "models")
    assert not (tmp_path / "models" / "a.gguf").exists()


def test_pack_emit_unpack_round_trip(tmp_path):
    """A folder packed into parts, emitted in calls of two parts, comes back file for file;
    a corrupted part or a missing call is refused."""
    src = tmp_path / "drafter"
    (src / "checkpoint").mkdir(parents=True)
    files = {
        "heads.json": b'{"kind": "eagle"}',
        "checkpoint/params.bin": _random_file(tmp_path / "x", 5000, 3),
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    manifest = parts.pack(src, tmp_path / "pack", 4096)
    calls = -(-len(manifest["parts"]) // 2)
    outs = [tmp_path / f"call{i}" for i in range(calls)]
    for i, out in enumerate(outs):
        parts.emit(tmp_path / "pack", i, 2, out)
    with pytest.raises(ValueError, match="no parts in call"):
        parts.emit(tmp_path / "pack", calls, 2, tmp_path / "extra")
    with pytest.raises(ValueError, match="missing"):
        parts.unpack(outs[:-1], tmp_path / "back")
    names = parts.unpack(outs, tmp_path / "back")
    assert sorted(Path(n).as_posix().removeprefix("./") for n in names) == sorted(files)
    for name, data in files.items():
        assert (tmp_path / "back" / name).read_bytes() == data
    first = outs[0] / "part000"
    first.write_bytes(b"x" + first.read_bytes()[1:])
    with pytest.raises(ValueError, match="sha256 of"):
        parts.unpack(outs, tmp_path / "again")


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    """A bad input ends the command with one `error:` line and exit status 1."""
    assert parts.main(["split", "--out", str(tmp_path), "--size", "0", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "error: --size must be positive, got 0"

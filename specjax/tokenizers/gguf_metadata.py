"""GGUF key/value metadata: the one reader in specjax, `read_gguf_metadata`.

Given an open `gguf.GGUFReader` it decodes the reader's fields with the package's own
`ReaderField.contents()`; given a path it parses the key/value section by hand, because
`gguf.GGUFReader` cannot do that job at a usable cost (see the function's docstring).
The checkpoint converter uses it too.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from specjax.tokenizers.base import TokenizerError

# --------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------

# GGUF value types (ggml's gguf.h; also gguf.GGUFValueType).
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}  # fmt: skip
_GGUF_DTYPES = {0: "u1", 1: "i1", 2: "u2", 3: "i2", 4: "u4", 5: "i4", 6: "f4", 7: "?", 10: "u8",
                11: "i8", 12: "f8"}  # fmt: skip


def read_gguf_metadata(source: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (tensors are not read).

    `source` is a path, a file opened by `specjax.checkpoints.gguf.open_gguf`, or an open
    `gguf.GGUFReader`. Strings come back as `str`, string arrays as `list[str]`, numeric
    arrays as numpy arrays, scalars as Python scalars. Only the metadata section is read, so
    the first part of a split file is enough.

    An open reader is decoded by the `gguf` package itself. A path is parsed here, by hand,
    because `gguf.GGUFReader` cannot do this job: opening it builds two numpy views for every
    string of the vocabulary and parses the whole tensor table, 9.7 s for Qwen2.5's 152k
    tokens where this parser takes 0.24 s (measured on the project's 2-core machine, gguf
    0.19), and a tokenizer is read on every model load (the weights come from a converted
    cache after the first). The hand parser also keeps the exact bytes of a token that is
    not valid UTF-8 (surrogateescape), where `ReaderField.contents()` raises.

    Raises:
      FileNotFoundError: no such file.
      TokenizerError: not a GGUF file, an unsupported GGUF version, or truncated metadata.
    """
    if not isinstance(source, (str, os.PathLike)):
        # An open file of specjax.checkpoints.gguf (its metadata parsed here already) or a
        # gguf.GGUFReader.
        if isinstance(getattr(source, "metadata", None), dict):
            return dict(source.metadata)
        return _metadata_from_reader(source)
    return read_gguf_header(source)[0]


def read_gguf_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int, str]:
    """(metadata, byte offset of the tensor table, number of tensors, byte order "<" or ">")
    of the GGUF file at `path`: what `read_gguf_metadata` reads, plus where the tensor infos
    that follow the key/value section start (the checkpoint reader parses those).

    Raises: as `read_gguf_metadata`."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise TokenizerError(f"{path} is empty, not a GGUF file") from None
    error: str | None = None  # (see read_gguf_metadata: no live traceback over the map)
    buf = memoryview(mm)
    try:
        header = _parse_gguf_kv(buf, path)
    except TokenizerError as e:
        error = str(e)
    except (struct.error, IndexError, ValueError) as e:
        error = f"{path}: truncated or corrupt GGUF metadata ({e})"
    buf.release()
    mm.close()
    if error is not None:
        raise TokenizerError(error)
    return header


def _parse_gguf_kv(buf: memoryview, path: Path) -> tuple[dict[str, Any], int, int, str]:
    if bytes(buf[:4]) != b"GGUF":
        raise TokenizerError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r})")
    # The version tells the byte order: GGUF v3 allows big-endian files.
    (version,) = struct.unpack_from("<I", buf, 4)
    e = "<"
    if version & 0xFFFF == 0:
        e = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        raise TokenizerError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = struct.unpack_from(e + "QQ", buf, 8)
    off = 24
    u64 = struct.Struct(e + "Q").unpack_from
    size = len(buf)

    def read_str(off: int) -> tuple[str, int]:
        (n,) = u64(buf, off)
        end = off + 8 + n
        if end > size:
            raise TokenizerError(f"{path}: truncated GGUF metadata (string past end of file)")
        # surrogateescape keeps the exact bytes of a token that is not valid UTF-8.
        return str(buf[off + 8 : end], "utf-8", "surrogateescape"), end

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key, off = read_str(off)
        (vtype,) = struct.unpack_from(e + "I", buf, off)
        off += 4
        if vtype == _GGUF_STRING:
            value, off = read_str(off)
        elif vtype == _GGUF_ARRAY:
            etype, count = struct.unpack_from(e + "IQ", buf, off)
            off += 12
            if etype == _GGUF_STRING:
                # The vocabulary: hundreds of thousands of strings, so the loop is inlined.
                items: list[str] = [""] * count
                for j in range(count):
                    (n,) = u64(buf, off)
                    off += 8
                    items[j] = str(buf[off : off + n], "utf-8", "surrogateescape")
                    off += n
                if off > size:
                    raise TokenizerError(f"{path}: truncated GGUF metadata (array of {key})")
                value = items
            elif etype in _GGUF_DTYPES:
                dtype = np.dtype(_GGUF_DTYPES[etype]).newbyteorder(e)
                if off + dtype.itemsize * count > size:
                    raise TokenizerError(f"{path}: truncated GGUF metadata (array of {key})")
                value = np.frombuffer(buf, dtype, count, off).astype(dtype.newbyteorder("="))
                off += dtype.itemsize * count
            else:
                raise TokenizerError(f"{path}: unsupported GGUF array type {etype} for {key}")
        elif vtype in _GGUF_SCALARS:
            fmt = e + _GGUF_SCALARS[vtype]
            (value,) = struct.unpack_from(fmt, buf, off)
            off += struct.calcsize(fmt)
        else:
            raise TokenizerError(f"{path}: unknown GGUF value type {vtype} for key {key}")
        out[key] = value
    return out, off, n_tensors, e


def _metadata_from_reader(reader: Any) -> dict[str, Any]:
    """Same dict as `read_gguf_metadata`, from an open `gguf.GGUFReader`."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's pseudo-fields for the header
            continue
        try:
            value = field.contents()
        except UnicodeDecodeError:  # a token that is not UTF-8: keep its bytes, as from a path
            strings = [field.parts[i].tobytes() for i in field.data]
            value = [str(b, "utf-8", "surrogateescape") for b in strings]
            value = value if len(field.types) > 1 else value[0]
        if isinstance(value, list) and value and not isinstance(value[0], str):
            value = np.asarray(value)
        out[key] = value
    return out

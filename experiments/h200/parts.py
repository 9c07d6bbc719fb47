"""Files to and from a lent GPU machine in parts, each part checked (stdlib only: it runs on
both machines). The device tool carries at most 64 MiB of working tree into a call and brings
at most 8 files of 16 MiB (64 MiB in all) back, and the lent machine goes back 30 s after a
call ends, so big files travel as parts over back-to-back calls (DEVELOPERS.md).

To the GPU machine (weights; here, then one call per part there):

    python experiments/h200/parts.py split --out=/tmp/parts --size=30000000 a.gguf b.gguf
    # each call carries .xfer/ = the manifest + one part (cp /tmp/parts/partNNN .xfer/part):
    python3 experiments/h200/parts.py append --manifest=.xfer/manifest.json --index=N \\
        .xfer/part ~/sc/incoming
    # the last call cuts the stream into the files, checks their sha256, moves them in place:
    python3 experiments/h200/parts.py join --manifest=.xfer/manifest.json ~/sc/incoming \\
        ~/sc/models

From the GPU machine (trained heads, results; there, then one call per 4 parts):

    python3 experiments/h200/parts.py pack --size=16000000 ~/w/runs/qwen_eagle/drafter ~/pack
    python3 experiments/h200/parts.py emit ~/pack --index=I --per_call=4 $OUT    # I = 0, 1, ...
    # here, from the folders the calls' files came back in:
    python experiments/h200/parts.py unpack --out=runs/qwen_eagle /work/.device/<call>/ ...

`append` refuses a part whose index does not follow the stream (a part lost or sent twice)
and one whose sha256 differs from the manifest's; a part already appended (a repeated call)
is skipped. `join` and `unpack` check every file's sha256 before anything is moved in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

CHUNK = 1 << 22


def sha256_of(path: Path, start: int = 0, length: int | None = None) -> str:
    """sha256 of `length` bytes of `path` from `start` (to the end when None)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            block = f.read(CHUNK if left is None else min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def _copy_range(src: Path, start: int, length: int, dest: Path) -> None:
    with open(src, "rb") as f, open(dest, "wb") as out:
        f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                raise ValueError(f"{src} ends {left} bytes early")
            out.write(block)
            left -= len(block)


def split(files: list[Path], out: Path, size: int) -> dict:
    """The files, one after another, as parts of `size` bytes in `out` (part000, ...), and
    out/manifest.json: each file's name, size and sha256, each part's size and sha256."""
    if size < 1:
        raise ValueError(f"--size must be positive, got {size}")
    out.mkdir(parents=True, exist_ok=True)
    entries = [{"name": f.name, "size": f.stat().st_size, "sha256": sha256_of(f)} for f in files]
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"two files share a name: {names}")
    parts = []
    index, filled, current = 0, 0, None
    for f in files:
        with open(f, "rb") as src:
            while block := src.read(min(CHUNK, size - filled)):
                if current is None:
                    current = open(out / f"part{index:03d}", "wb")
                current.write(block)
                filled += len(block)
                if filled == size:
                    current.close()
                    current, filled, index = None, 0, index + 1
    if current is not None:
        current.close()
        index += 1
    for i in range(index):
        path = out / f"part{i:03d}"
        parts.append({"name": path.name, "size": path.stat().st_size, "sha256": sha256_of(path)})
    manifest = {"part_size": size, "files": entries, "parts": parts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def append(manifest: dict, index: int, part: Path, stream: Path) -> str:
    """Appends part `index` to `stream` after checking its sha256 and that the stream holds
    exactly parts 0 .. index - 1; returns what it did."""
    parts = manifest["parts"]
    if not 0 <= index < len(parts):
        raise ValueError(f"part index {index} is outside 0..{len(parts) - 1}")
    start = index * manifest["part_size"]
    end = start + parts[index]["size"]
    have = stream.stat().st_size if stream.exists() else 0
    if have == end and sha256_of(stream, start, parts[index]["size"]) == parts[index]["sha256"]:
        return f"part {index} already appended ({have} bytes)"
    if have != start:
        raise ValueError(
            f"{stream} holds {have} bytes, part {index} starts at {start}: "
            f"a part was lost or sent twice (start over from the part at {have} bytes)"
        )
    if part.stat().st_size != parts[index]["size"] or sha256_of(part) != parts[index]["sha256"]:
        raise ValueError(f"{part} is not part {index} of the manifest (size or sha256 differs)")
    stream.parent.mkdir(parents=True, exist_ok=True)
    with open(stream, "ab") as out, open(part, "rb") as src:
        shutil.copyfileobj(src, out, CHUNK)
    return f"part {index} of {len(parts)} appended: {end} bytes"


def join(manifest: dict, stream: Path, dest: Path) -> list[Path]:
    """Cuts `stream` into the manifest's files in `dest`, each checked before it is moved in
    place; removes the stream."""
    total = sum(e["size"] for e in manifest["files"])
    have = stream.stat().st_size
    if have != total:
        raise ValueError(f"{stream} holds {have} bytes, the files {total}: parts are missing")
    dest.mkdir(parents=True, exist_ok=True)
    staged, offset = [], 0
    for entry in manifest["files"]:
        tmp = dest / f".{entry['name']}.partial"
        _copy_range(stream, offset, entry["size"], tmp)
        if sha256_of(tmp) != entry["sha256"]:
            tmp.unlink()
            raise ValueError(f"sha256 of {entry['name']} differs from the manifest's")
        staged.append((tmp, dest / entry["name"]))
        offset += entry["size"]
    for tmp, final in staged:
        os.replace(tmp, final)
    stream.unlink()
    return [final for _, final in staged]


def pack(folder: Path, work: Path, size: int) -> dict:
    """`folder` as a tar stream split into parts of `size` bytes in `work` (manifest.json:
    the tar's sha256, the parts')."""
    work.mkdir(parents=True, exist_ok=True)
    tar_path = work / "folder.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname=".")
    manifest = split([tar_path], work / "parts", size)
    tar_path.unlink()
    return manifest


def emit(work: Path, index: int, per_call: int, out: Path) -> list[Path]:
    """Copies parts [index * per_call, (index + 1) * per_call) of a pack, and the manifest
    with the first, into `out` (the device call's $OUT)."""
    parts_dir = work / "parts"
    manifest = json.loads((parts_dir / "manifest.json").read_text())
    names = [p["name"] for p in manifest["parts"]][index * per_call : (index + 1) * per_call]
    if not names:
        raise ValueError(f"no parts in call {index}: the pack has {len(manifest['parts'])}")
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names + (["manifest.json"] if index == 0 else []):
        shutil.copy(parts_dir / name, out / name)
        copied.append(out / name)
    return copied


def unpack(folders: list[Path], out: Path) -> list[str]:
    """Joins a pack's parts found in `folders` (each checked against the manifest) and
    extracts the folder into `out`; returns the extracted file names."""
    found = {p.name: p for folder in folders for p in folder.iterdir()}
    if "manifest.json" not in found:
        raise ValueError("no manifest.json among the folders (it comes with call 0)")
    manifest = json.loads(found["manifest.json"].read_text())
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / ".folder.tar.partial"
    try:
        with open(tar_path, "wb") as tar_file:
            for part in manifest["parts"]:
                path = found.get(part["name"])
                if path is None:
                    raise ValueError(f"{part['name']} is missing from the folders")
                if sha256_of(path) != part["sha256"]:
                    raise ValueError(f"sha256 of {path} differs from the manifest's")
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, tar_file, CHUNK)
        if sha256_of(tar_path) != manifest["files"][0]["sha256"]:
            raise ValueError("the joined tar's sha256 differs from the manifest's")
        with tarfile.open(tar_path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
            tar.extractall(out, filter="data")  # no absolute paths, links out or devices
    finally:
        tar_path.unlink(missing_ok=True)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("--out", type=Path, required=True)
    # A call carries at most 64 MiB: the part plus the tracked tree (16 MB in the
    # twenty-first session) plus what else it carries.
    p.add_argument("--size", type=int, default=30_000_000)
    p.add_argument("files", type=Path, nargs="+")
    p = sub.add_parser("append")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("part", type=Path)
    p.add_argument("stream", type=Path)
    p = sub.add_parser("join")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("stream", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("pack")
    p.add_argument("--size", type=int, default=16_000_000)
    p.add_argument("folder", type=Path)
    p.add_argument("work", type=Path)
    p = sub.add_parser("emit")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--per_call", type=int, default=4)
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("unpack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            manifest = split(args.files, args.out, args.size)
            print(f"{len(manifest['parts'])} parts in {args.out}")
        elif args.command == "append":
            manifest = json.loads(args.manifest.read_text())
            print(append(manifest, args.index, args.part, args.stream))
        elif args.command == "join":
            manifest = json.loads(args.manifest.read_text())
            for path in join(manifest, args.stream, args.dest):
                print(f"{path}: sha256 ok")
        elif args.command == "pack":
            manifest = pack(args.folder, args.work, args.size)
            calls = -(-len(manifest["parts"]) // 4)
            print(f"{len(manifest['parts'])} parts ({calls} calls of 4)")
        elif args.command == "emit":
            for path in emit(args.work, args.index, args.per_call, args.out):
                print(path)
        else:
            names = unpack(args.folders, args.out)
            print(f"{len(names)} files in {args.out}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

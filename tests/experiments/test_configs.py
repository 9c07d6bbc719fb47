"""Experiment configs: the files parse, overrides apply with types, mistakes fail at once."""

from __future__ import annotations

import subprocess
import sys

import ml_collections
import pytest

from specjax import experiment


@pytest.mark.parametrize("name", ["qwen_coder", "smollm", "tiny"])
def test_config_files_parse_validate_and_lock(name, config_module):
    module = config_module(name)
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict) and config.is_locked
    experiment.validate(config)
    points = module.get_sweep()
    assert points and all(isinstance(p, dict) for p in points)
    for point in points:  # every point of the sweep is a valid config too
        experiment.finalize(config, point)
    with pytest.raises(AttributeError, match="gamme"):
        config.gamme = 4  # locked: a typo cannot add a key


def test_smollm_drafters_sweep(config_module, repo_root, monkeypatch):
    """One point per drafter; those whose trained heads are not in runs/ fail validation
    naming the config that trains them (runs/ is not in git)."""
    monkeypatch.chdir(repo_root)  # heads folders are relative to the repository
    module = config_module("smollm_drafters")
    config = module.get_config()
    points = module.get_sweep()
    names = [experiment.point_name(p) for p in points]
    assert len(set(names)) == len(names) == 9
    kinds = [p["drafter.kind"] for p in points]
    assert kinds.count("ngram") == 3 and kinds.count("early-exit") == 3
    assert kinds.count("eagle") == 2 and kinds.count("medusa") == 1
    for point in points:
        heads = point.get("drafter.heads")
        if heads is None or (repo_root / heads / "heads.json").is_file():
            experiment.finalize(config, point)
        else:
            with pytest.raises(
                experiment.ConfigError, match=f"configs/train_{point['drafter.kind']}"
            ):
                experiment.finalize(config, point)


def test_qwen_pair(config_module):
    config = config_module("qwen_coder").get_config()
    assert config.target == "qwen2.5-coder-1.5b-instruct"
    assert config.drafter.kind == "model" and config.drafter.model == "qwen2.5-coder-0.5b-instruct"
    assert [p["gamma"] for p in config_module("qwen_coder").get_sweep()] == list(range(1, 9))


def test_overrides_are_typed(config_module):
    config = config_module("qwen_coder").get_config(
        "gamma=7,sampling.temperature=1,sampling.top_k=50,prompts.categories=writing,coding,"
        "stop_at_eos=false,dtype=float32"
    )
    assert config.gamma == 7 and isinstance(config.gamma, int)
    assert config.sampling.temperature == 1.0 and isinstance(config.sampling.temperature, float)
    assert config.sampling.top_k == 50
    assert config.prompts.categories == "writing,coding"  # the comma list stays one value
    assert config.stop_at_eos is False and config.dtype == "float32"


def test_parse_arg_and_points():
    assert experiment.parse_arg(None) == {} and experiment.parse_arg(" ") == {}
    assert experiment.parse_arg("a=1, b.c=x,y ,d=2") == {"a": "1", "b.c": "x,y", "d": "2"}
    with pytest.raises(experiment.ConfigError, match="key=value"):
        experiment.parse_arg("gamma")
    assert experiment.parse_points("gamma=1;gamma=2,sampling.temperature=0.5") == [
        {"gamma": "1"},
        {"gamma": "2", "sampling.temperature": "0.5"},
    ]
    assert (
        experiment.point_name({"gamma": 2, "drafter.model": "a/b c"})
        == "gamma=2,drafter.model=a_b_c"
    )


@pytest.mark.parametrize(
    "arg, message",
    [
        ("gamme=4", "unknown config key 'gamme'. Did you mean gamma"),
        ("sampling=1", "'sampling' is a group of settings"),
        ("gamma=abc", "gamma='abc': expected a value of type int"),
        ("stop_at_eos=maybe", "expected a value of type bool"),
        ("gamma=0", "gamma must be an integer >= 1, got 0"),
        ("max_new_tokens=-5", "max_new_tokens must be an integer >= 1"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("repeats=0", "repeats must be an integer >= 1"),
        ("dtype=float16", "dtype must be one of float32, bfloat16, got 'float16'"),
        ("sampling.temperature=-1", "sampling.temperature must be >= 0"),
        ("sampling.top_p=0", "sampling.top_p must be in (0, 1]"),
        ("sampling.top_k=-1", "sampling.top_k must be >= 0"),
        ("mesh.model=0", "mesh.model must be an integer >= 1"),
        ("prompts.name=mt-bench-x", "Unknown prompt set 'mt-bench-x'"),
        ("prompts.categories=writing,cooking", "prompts.categories ['cooking'] unknown"),
        ("prompts.subset=-1", "prompts.subset must be >= 0"),
        ("drafter.kind=beam", "drafter.kind: unknown drafter kind 'beam'; known: model"),
        ("drafter.model=qwen2.5-coder-0.5b-instrct", "Did you mean 'qwen2.5-coder-0.5b-instruct'"),
        ("target=random:huge", "unknown random shape 'huge'"),
        ("target=random:tiny", "has random weights and no tokenizer"),
        ("drafter.model=perturbed:x", "perturbed:<scale> with a number"),
        ("target=perturbed:0.1", "only a draft"),
    ],
)
def test_bad_values_fail_with_a_clear_message(arg, message, config_module):
    with pytest.raises(experiment.ConfigError) as error:
        config_module("qwen_coder").get_config(arg)
    assert message in str(error.value)


def test_every_problem_is_listed_at_once(config_module):
    with pytest.raises(experiment.ConfigError) as error:
        config_module("tiny").get_config("gamma=0,dtype=int8,sampling.top_p=2")
    text = str(error.value)
    assert "gamma" in text and "dtype" in text and "top_p" in text


def test_unrunnable_settings_fail_before_loading(tmp_path, config_module):
    tiny = config_module("tiny")
    with pytest.raises(ValueError, match="needs 64 devices"):
        experiment.run_experiment(tiny.get_config("mesh.model=64"), tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(experiment.ConfigError, match="multiple of mesh.data"):
        tiny.get_config("batch_size=3,mesh.data=2")


def test_launcher_rejects_unknown_command_line_keys(tmp_path, repo_root):
    """--config.<typo> fails in flag parsing, before any model is loaded."""
    cmd = [
        sys.executable, "-m", "experiments.run", "--config=configs/tiny.py:gamma=2",
        "--config.gamme=3", f"--workdir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "gamme" in proc.stderr
    assert not (tmp_path / "config.json").exists()

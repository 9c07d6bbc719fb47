"""Bad inputs a new user tries, through `specjax.generate`, the CLI, the configs and the
launchers: each one ends with a message that names the problem (one line on the command
line, never a traceback), before anything compiles.

One table per entry point; every row is (id, input, words the message must contain). The
inputs the library once accepted silently (float or 3-D prompts, `max_new_tokens=True`,
temperature inf, an empty `--points`, a budget past the model's context ...) are here too,
and two that must *work* are tested below the table (pad_id outside the vocabulary, and
`adaptive_gamma` with a mesh, in tests/parallel/test_sharding.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, random_model, tiny_gguf_with_tokenizer

import specjax
from specjax import Sampling, cli, console, experiment
from specjax.training import config as training_config

REPO = Path(__file__).resolve().parents[1]
V = TINY_LLAMA.vocab_size  # 64
SHORT_CONTEXT = TINY_LLAMA.replace(max_position=32)


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=0)


@pytest.fixture(scope="module")
def short_context_target():
    return random_model(SHORT_CONTEXT, seed=0)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return tiny_gguf_with_tokenizer(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def tiny_config(arg=None):
    """configs/tiny.py's get_config, loaded by path as the launchers load it."""
    spec = importlib.util.spec_from_file_location("config_tiny", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def verify_never_called(*args):
    raise AssertionError("validation must fail first")


# --------------------------------------------------------------------------------------------
# specjax.generate: (id, keyword arguments over a valid call, exception, message words).

GOOD = dict(prompt_ids=[[1, 2, 3]], max_new_tokens=4)
GENERATE_CASES = [
    ("prompt-is-a-string", dict(prompt_ids="hello"), TypeError, r"prompt_ids is a str.*encode"),
    ("prompt-is-bytes", dict(prompt_ids=b"hi"), TypeError, r"prompt_ids is a bytes"),
    ("prompt-row-is-a-string", dict(prompt_ids=["hello"]), TypeError, r"prompt 0 is a str"),
    ("prompt-is-an-int", dict(prompt_ids=5), TypeError, r"prompt_ids must be token ids"),
    ("float-prompt-array", dict(prompt_ids=np.array([[1.7, 2.0]])), TypeError,
     r"prompt 0 holds float64 values.*1\.7"),
    ("float-prompt-list", dict(prompt_ids=[[1.0, 2.0]]), TypeError, r"not integer token ids"),
    ("bool-prompt", dict(prompt_ids=np.array([True, False])), TypeError, r"holds bool values"),
    ("3d-prompt-array", dict(prompt_ids=np.ones((2, 2, 3), np.int32)), ValueError,
     r"shape \(2, 2, 3\).*\[B, P\]"),
    ("3d-prompt-list", dict(prompt_ids=[[[1, 2]]]), ValueError, r"prompt 0 has shape \(1, 2\)"),
    ("ragged-inside-a-prompt", dict(prompt_ids=[[1, [2, 3]]]), ValueError,
     r"prompt 0 is not a flat sequence"),
    ("no-prompts", dict(prompt_ids=[]), ValueError, r"no prompts given"),
    ("empty-prompt", dict(prompt_ids=[[1], []]), ValueError, r"prompt 1 is empty"),
    ("token-outside-vocab", dict(prompt_ids=[[1, V]]), ValueError, rf"outside \[0, {V}\)"),
    # A [B, P] array is checked as a whole; the errors still name the first bad prompt.
    ("token-outside-vocab-array", dict(prompt_ids=np.array([[1, 2], [3, 4], [-1, V]])),
     ValueError, rf"prompt 2 has token ids outside \[0, {V}\) \(min -1, max {V}\)"),
    ("no-prompts-array", dict(prompt_ids=np.zeros((0, 3), np.int32)), ValueError,
     r"no prompts given"),
    ("empty-prompts-array", dict(prompt_ids=np.zeros((2, 0), np.int32)), ValueError,
     r"prompt 0 is empty"),
    ("max-new-tokens-True", dict(max_new_tokens=True), ValueError,
     r"max_new_tokens must be an integer >= 1, got True"),
    ("max-new-tokens-float", dict(max_new_tokens=2.0), ValueError, r"max_new_tokens.*2\.0"),
    ("max-new-tokens-0", dict(max_new_tokens=0), ValueError, r"max_new_tokens.*got 0"),
    ("max-new-tokens-1e9", dict(max_new_tokens=10**9), ValueError,
     r"exceed the model's context of 8192 \(ModelConfig\.max_position\)"),
    ("prompt-longer-than-cache", dict(prompt_ids=[list(range(1, 40))], cache_size=20),
     ValueError, r"prompt of 39 tokens does not fit the KV cache of 20 slots"),
    ("cache-size-True", dict(cache_size=True), ValueError, r"cache_size must be an integer"),
    ("pad-id-bool", dict(pad_id=True), ValueError, r"pad_id must be an int32"),
    ("pad-id-too-large", dict(pad_id=2**40), ValueError, r"pad_id must be an int32"),
    ("seed-2-to-63", dict(seed=2**63), ValueError, r"seed 9223372036854775808 does not fit"),
    ("seed-float", dict(seed=1.5), TypeError, r"seed must be an integer or a PRNG key"),
    ("seed-bool", dict(seed=True), TypeError, r"seed must be an integer"),
    ("sampling-not-a-Sampling", dict(sampling=0.7), TypeError, r"Sampling\.create"),
    ("eos-outside-vocab", dict(eos_ids=[V]), ValueError, r"eos id 64 is outside"),
    ("gamma-0", dict(drafter="self", gamma=0), ValueError, r"gamma \(draft length\).*got 0"),
    ("gamma-True", dict(drafter="self", gamma=True), ValueError, r"gamma.*got True"),
    ("tree-with-adaptive-gamma", dict(drafter="self", tree="2,1", adaptive_gamma=True),
     ValueError, r"adaptive_gamma does not apply to tree="),
    ("tree-with-verify-fn", dict(drafter="self", tree="2,1", verify_fn=verify_never_called),
     ValueError, r"verify_fn is the acceptance rule of a linear draft"),
]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error, message", [c[1:] for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES]
)
def test_generate_refuses_with_a_message(target, kwargs, error, message):
    kwargs = {**GOOD, **kwargs}
    drafter = target if kwargs.pop("drafter", None) == "self" else None
    with pytest.raises(error, match=message):
        specjax.generate(target, drafter, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_ids=[list(range(1, 41))]), r"prompt of 40 tokens is longer than the model's"),
        (dict(max_new_tokens=30), r"prompt \(3 tokens\) \+ max_new_tokens \(30\) = 33 positions"),
    ],
    ids=["prompt-past-context", "prompt-plus-budget-past-context"],
)
def test_context_length_is_checked_before_anything_runs(short_context_target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        specjax.generate(short_context_target, None, **{**GOOD, **kwargs})
    # A cache that stops the rows inside the context is allowed.
    ok = specjax.generate(short_context_target, None, [[1, 2, 3]], max_new_tokens=40,
                          cache_size=32)  # fmt: skip
    assert ok.stop_reason_names() == ["cache_full"]


def test_a_cache_larger_than_the_device_is_refused(target, monkeypatch):
    """Where the device reports its memory (GPUs, TPUs), a KV cache that cannot fit fails
    before anything is allocated; CPUs report none, so a fake device stands in here."""
    import jax

    class SmallDevice:
        def memory_stats(self):
            return {"bytes_limit": 2**20}  # 1 MiB

    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [SmallDevice()])
    # 2 (k, v) x 2 layers x 2 kv heads x 8 dims x 4 bytes = 256 bytes per row and slot.
    with pytest.raises(ValueError, match=r"KV cache of 64 rows x 4096 slots needs 0\.1 GiB"):
        specjax.generate(target, None, [[1, 2]] * 64, max_new_tokens=4, cache_size=4096)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1.0])
def test_temperature_must_be_finite(temperature):
    with pytest.raises(ValueError, match=r"temperature must be >= 0 and finite"):
        Sampling.create(temperature)


def test_pad_id_outside_the_vocabulary_only_fills_the_output(target):
    """pad_id >= vocab once padded the prompt too: NaN embeddings reached every row through
    attention and every row came back as token 0. Now it only fills the output."""
    prompts = [[1, 2, 3], [4]]
    reference = specjax.generate(target, None, prompts, max_new_tokens=4, eos_ids=[])
    for pad_id in (V, V + 100, -1):
        out = specjax.generate(target, None, prompts, max_new_tokens=4, pad_id=pad_id)
        assert out.token_lists() == reference.token_lists(), pad_id
    row = reference.token_lists()[0]
    short = specjax.generate(target, None, prompts, max_new_tokens=4, pad_id=-1, eos_ids=[row[1]])
    stop = row.index(row[1]) + 1  # the row ends at the first occurrence of its EOS
    assert int(short.num_generated[0]) == stop and np.all(np.asarray(short.tokens)[0, stop:] == -1)


# --------------------------------------------------------------------------------------------
# The command line, in this process: (id, arguments, message words).

CLI_CASES = [
    ("seed-2-to-63", ["--seed", str(2**63)], r"seed 9223372036854775808 does not fit"),
    ("temperature-inf", ["--temperature", "inf"], r"temperature must be >= 0 and finite"),
    ("temperature-nan", ["--temperature", "nan"], r"temperature must be >= 0 and finite"),
    ("top-p-0", ["--temperature", "1", "--top-p", "0"], r"top_p must be in \(0, 1\]"),
    ("gamma-0", ["--gamma", "0"], r"--gamma must be >= 1"),
    ("non-utf8-prompt", ["--prompt", "caf\udce9"], r"--prompt is not UTF-8 text \(byte 0xe9"),
    ("max-new-tokens-1e9", ["--max-new-tokens", "1000000000"], r"exceed the model's context"),
    ("folder-without-checkpoint", ["--target", "{empty_dir}"],
     r"directory with neither config\.json, specjax\.json nor exactly one \.gguf"),
    ("file-that-is-no-checkpoint", ["--target", "{text_file}"], r"notes\.txt"),
    ("heads-without-folder", ["--drafter", "eagle"], r"--drafter eagle needs --heads"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_line(tiny_gguf, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    paths = {"empty_dir": tmp_path / "empty", "text_file": tmp_path / "notes.txt"}
    args = [a.format(**paths) for a in args]
    base = {"--target": str(tiny_gguf), "--prompt": "hello", "--max-new-tokens": "4"}
    for i in range(0, len(args) - 1):
        base.pop(args[i], None)
    argv = ["generate", "--raw", *[x for kv in base.items() for x in kv], *args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    text = str(exit_info.value.code)
    assert text.startswith("error: ") and "\n" not in text, text
    assert re.search(message, text), text


def _cli_error_line(tmp_path: Path, switches: dict[str, str]) -> str:
    """`python -m specjax.cli generate` (a fresh process: the switches are read at import)
    with `switches` in its environment; asserts it ended with status 1 and one stderr line,
    and returns that line."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **switches}
    command = [sys.executable, "-m", "specjax.cli", "generate", "--prompt", "hi",
               "--max-new-tokens", "4", "--target", str(tmp_path / "none.gguf")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def test_bad_kernel_switches_end_the_cli_with_one_line(tmp_path):
    """The SPECJAX_* decode switches are read when specjax is imported; a bad value is not an
    import traceback but one `error:` line naming every bad switch, before a model loads."""
    line = _cli_error_line(
        tmp_path, {"SPECJAX_ATTENTION": "bogus", "SPECJAX_SINGLE_ROW_PAD_MIN_WIDTH": "wide"}
    )
    assert re.fullmatch(
        r"error: SPECJAX_ATTENTION must be one of 'auto', 'jnp', 'pallas', 'fused', got 'bogus'; "
        r"SPECJAX_SINGLE_ROW_PAD_MIN_WIDTH must be a whole number of features, got 'wide'",
        line,
    ), line


def test_a_bad_kernel_launch_ends_the_cli_with_one_line_on_any_backend(tmp_path):
    """SPECJAX_ROPE_ATTENTION is refused by name even where the fused kernel is not used."""
    line = _cli_error_line(tmp_path, {"SPECJAX_ROPE_ATTENTION": "splits=8,warps=4"})
    assert line.startswith("error: SPECJAX_ROPE_ATTENTION: 'warps=4' is not one of"), line


def test_a_bad_kernel_switch_stops_the_first_decode(monkeypatch):
    """In the library the check runs where a decode layer is traced."""
    from specjax.models import layers

    model, params = random_model(TINY_LLAMA, seed=0)
    monkeypatch.setattr(layers, "NORM", "triton")
    message = r"SPECJAX_NORM must be one of 'xla', 'pallas', got 'triton'"
    with pytest.raises(ValueError, match=message):
        specjax.generate((model, params), None, [[1, 2, 3]], max_new_tokens=2)


# --------------------------------------------------------------------------------------------
# Configs, in this process: (id, overrides of configs/tiny.py's config, message words).

CONFIG_CASES = [
    ("typo-key", {"gamme": 2}, r"unknown config key 'gamme'\. Did you mean gamma"),
    ("typo-nested-key", {"sampling.temprature": 0.5}, r"Did you mean sampling\.temperature"),
    ("temperature-inf", {"sampling.temperature": float("inf")}, r"must be >= 0 and finite"),
    ("gamma-0", {"gamma": 0}, r"gamma must be an integer >= 1, got 0"),
    ("seed-2-to-63", {"seed": 2**63}, r"seed must be an integer in \[0, 2\*\*63\)"),
    ("group-as-value", {"sampling": 3}, r"'sampling' is a group of settings"),
    ("wrong-type", {"gamma": "four"}, r"gamma='four': expected a value of type int"),
]  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_config_refuses_with_a_message(overrides, message):
    with pytest.raises(experiment.ConfigError, match=message):
        experiment.finalize(tiny_config(), overrides)


def test_a_key_a_config_file_invents_gets_a_suggestion():
    config = experiment.base_config()
    config.gama = 3  # a typo in a config file: an unlocked ConfigDict takes it
    with pytest.raises(experiment.ConfigError, match=r"unknown config key 'gama' \(did you mean"):
        experiment.validate(config)
    training = training_config.base_config()
    training.train.num_stepz = 3
    with pytest.raises(training_config.ConfigError, match=r"'train\.num_stepz' \(did you mean"):
        training_config.validate(training)


def test_an_empty_sweep_is_refused(tmp_path):
    with pytest.raises(experiment.ConfigError, match=r"the sweep has no points"):
        experiment.run_sweep(tiny_config(), [], tmp_path, progress=False)
    assert not (tmp_path / "points").exists()


def test_a_file_as_workdir_is_refused(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"workdir .*a_file is a file, not a folder"):
        experiment.run_experiment(tiny_config(), path, progress=False)


# --------------------------------------------------------------------------------------------
# Launchers, as subprocesses: (id, module, flags, message words). Each must print exactly one
# line on stderr, starting with "error:", and exit with status 1.

LAUNCHER_CASES = [
    ("run-typo-flag", "run", ["--config=configs/tiny.py", "--config.gamme=4"],
     r"unknown config key 'gamme' \(in --config\.gamme=4\)\. Did you mean 'gamma'"),
    ("run-typo-nested-flag", "run", ["--config=configs/tiny.py", "--config.sampling.temprature=1"],
     r"Did you mean 'sampling\.temperature'"),
    ("run-bad-value-in-config-arg", "run", ["--config=configs/tiny.py:gamma=0"],
     r"bad experiment config: gamma must be an integer >= 1, got 0"),
    ("run-bad-value-flag", "run", ["--config=configs/tiny.py", "--config.gamma=0"],
     r"gamma must be an integer >= 1, got 0"),
    ("run-unknown-key-in-config-arg", "run", ["--config=configs/tiny.py:gamme=2"],
     r"unknown config key 'gamme'\. Did you mean gamma"),
    ("run-file-as-workdir", "run", ["--config=configs/tiny.py", "--workdir={a_file}"],
     r"is a file, not a folder"),
    ("run-folder-without-checkpoint", "run",
     ["--config=configs/tiny.py", "--config.target={empty_dir}"],
     r"directory with neither config\.json"),
    ("run-missing-config-file", "run", ["--config=configs/no_such_config.py"],
     r"No such file or directory: 'configs/no_such_config\.py'"),
    ("sweep-empty-points", "sweep", ["--config=configs/tiny.py", "--points=;"],
     r"--points=';' lists no point"),
    ("train-typo-key", "train_draft", ["--config=configs/train_distill_tiny.py:train.num_stepz=3"],
     r"unknown config key 'train\.num_stepz'\. Did you mean train\.num_steps"),
    ("demo-bad-flag", "demo", ["--prompts=three"], r"flag --prompts=three"),
]  # fmt: skip


def test_launchers_print_one_line(tmp_path):
    """All launcher cases at once (each is a separate Python process: ~3 s of imports)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    paths = {"empty_dir": tmp_path / "empty", "a_file": tmp_path / "a_file"}
    env = {**os.environ, "SPECJAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    running = []
    for name, module, flags, message in LAUNCHER_CASES:
        flags = [f.format(**paths) for f in flags]
        if not any(f.startswith("--workdir") for f in flags) and module != "demo":
            flags.append(f"--workdir={tmp_path / name}")
        command = [sys.executable, "-m", f"experiments.{module}", *flags]
        process = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        running.append((name, message, process))
    failures = []
    for name, message, process in running:
        _, stderr = process.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        ok = (
            process.returncode == 1
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and re.search(message, lines[0])
        )
        if not ok:
            failures.append(f"{name}: status {process.returncode}, stderr:\n{stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)


def test_one_line_describes_multi_line_messages():
    assert console.one_line("bad experiment config:\n  - a\n  - b") == "bad experiment config: a; b"
    assert console.one_line("first\nsecond") == "first second"
    assert console.describe(KeyError("k")) == "KeyError: 'k'"


def test_prompt_arrays_and_lists_pad_alike():
    """The whole-array check and the equal-length copy give what the per-row path gives."""
    from specjax import api

    rows = np.array([[5, 1, 2], [3, 4, 6]], np.int32)
    for prompts in (rows, jnp.asarray(rows), rows.tolist()):
        padded, lengths = api.pad_prompts(prompts, V, pad_id=7, bucket=4)
        np.testing.assert_array_equal(padded, [[5, 1, 2, 7], [3, 4, 6, 7]])
        np.testing.assert_array_equal(lengths, [3, 3])
    padded, lengths = api.pad_prompts([[5, 1, 2], [3]], V, pad_id=7, bucket=4)
    np.testing.assert_array_equal(padded, [[5, 1, 2, 7], [3, 7, 7, 7]])
    np.testing.assert_array_equal(lengths, [3, 1])

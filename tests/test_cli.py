"""The command line: JSON output on the real SmolLM2 weights, and its input errors."""

import json

import pytest

from specjax import cli


class FakeTokenizer:
    def __init__(self, tokens):
        self.tokens = tokens

    @property
    def vocab_size(self):
        return len(self.tokens)

    def id_to_token(self, token_id):
        return self.tokens[token_id]


def test_tokenizers_that_differ_are_refused():
    same = FakeTokenizer(["a", "b", "c"])
    cli.check_same_tokenizer(same, FakeTokenizer(["a", "b", "c"]), ["t", "d"])
    with pytest.raises(SystemExit, match="different tokenizers"):
        cli.check_same_tokenizer(same, FakeTokenizer(["a", "x", "c"]), ["t", "d"])
    with pytest.raises(SystemExit, match="different tokenizers"):
        cli.check_same_tokenizer(same, FakeTokenizer(["a", "b"]), ["t", "d"])


def run_json(capsys, *args):
    assert cli.main(["generate", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_ngram_equals_autoregressive(capsys):
    common = ["--target", "smollm2-135m-instruct", "--prompt", "List three primes.",
              "--max-new-tokens", "12"]  # fmt: skip
    plain = run_json(capsys, *common)
    drafted = run_json(capsys, *common, "--drafter", "ngram", "--gamma", "3")
    assert drafted["token_ids"] == plain["token_ids"]
    assert len(plain["token_ids"]) <= 12 and plain["text"]
    assert set(drafted["stats"]) >= {"target_calls", "tau", "acceptance_per_position", "seconds"}
    assert len(drafted["stats"]["acceptance_per_position"]) == 3
    assert drafted["stats"]["kernels"]["attention"] == "jnp"  # "auto" on the CPU backend
    assert plain["stats"]["target_calls"] == len(plain["token_ids"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "no-such-model", "--prompt", "x", "--max-new-tokens", "4"], "no-such"),
        (["--target", "smollm2-135m-instruct", "--prompt", "x", "--max-new-tokens", "0"],
         "max-new-tokens"),
        (["--target", "smollm2-135m-instruct", "--prompt", "x", "--max-new-tokens", "4",
          "--gamma", "0"], "gamma"),
        (["--target", "smollm2-135m-instruct", "--prompt", "x", "--max-new-tokens", "4",
          "--temperature", "-1"], "temperature"),
    ],
)  # fmt: skip
def test_bad_input_is_a_message(args, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["generate", *args])

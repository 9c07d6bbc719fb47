"""The drafter registry: spec parsing (good specs, and bad ones with messages that name the
problem), defaults kept in one place, and the CLI, an experiment config and a benchmark spec
building the same drafter from the same name."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from specjax import cli, experiment
from specjax.bench import speedup
from specjax.decoding.tree import DynamicTreeSpec, LookupTreeSpec, TreeSpec
from specjax.drafters import registry
from specjax.drafters.heads import init_heads, save_heads
from specjax.drafters.ngram import NgramDrafter
from specjax.experiment import pairs
from specjax.training import config as training_config
from specjax.training import experiment as training_experiment

_WEIGHT_CHOICES = "'float', 'int8', 'int8_layer', 'int8_lm_head'"  # quantize.DRAFT_WEIGHTS

# --------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, kind, knobs, gamma, tree",
    [
        ("ngram", "ngram", {"ngram_n": 3, "ngram_min": 1}, None, None),
        ("ngram:ngram_n=5,ngram_min=2,gamma=8", "ngram", {"ngram_n": 5, "ngram_min": 2}, 8, None),
        (" early_exit : exit_layer = 10 ", "early-exit", {"exit_layer": 10}, None, None),
        ("early-exit", "early-exit", {"exit_layer": 0}, None, None),
        # A tree's commas belong to the tree; the tree's depth is the draft length.
        (
            "early-exit:tree=4,2,1,exit_layer=3",
            "early-exit", {"exit_layer": 3}, 3, TreeSpec((4, 2, 1)),
        ),
        (
            "model:model=random:tiny,tree=dynamic:depth=4,top_k=4,nodes=16",
            "model", {"model": "random:tiny"}, 4, DynamicTreeSpec(4, 4, 16),
        ),
        (
            "eagle:heads=runs/e/drafter,gamma=3",
            "eagle", {"heads": "runs/e/drafter", "draft_vocab": 0, "weights": "float"}, 3, None,
        ),
        # A key after a tree ends it: weights is a key, not more of the tree.
        (
            "eagle:heads=h,tree=dynamic:depth=4,top_k=4,nodes=12,weights=int8",
            "eagle", {"heads": "h", "draft_vocab": 0, "weights": "int8"}, 4,
            DynamicTreeSpec(4, 4, 12),
        ),
        ("medusa:heads=m,draft_vocab=64", "medusa", {"heads": "m", "draft_vocab": 64}, None, None),
        # A lookup branch's keys continue the tree (they are no keys of the spec).
        (
            "eagle:heads=h,tree=dynamic:depth=4,top_k=4,nodes=12,lookup=8,lookup_ngram=4,"
            "lookup_ngram_min=2,draft_vocab=64",
            "eagle", {"heads": "h", "draft_vocab": 64, "weights": "float"}, 8,
            LookupTreeSpec(DynamicTreeSpec(4, 4, 12), 8, max_ngram=4, min_ngram=2),
        ),
    ],
)  # fmt: skip
def test_good_specs_parse_and_read_back(text, kind, knobs, gamma, tree):
    spec = registry.parse_spec(text)
    assert (spec.kind, dict(spec.knobs), spec.gamma, spec.tree) == (kind, knobs, gamma, tree)
    assert registry.parse_spec(spec.text()) == spec  # the canonical text reads back


def test_adaptive_name_and_canonical_text():
    spec = registry.parse_spec("early_exit:name=ee,adaptive=1,exit_layer=10,gamma=3")
    assert spec.adaptive and spec.name == "ee" and spec.label() == "ee"
    assert spec.text() == "early-exit:exit_layer=10,gamma=3,adaptive=1,name=ee"
    assert registry.canonical_kind("early_exit") == registry.canonical_kind("early-exit")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "unknown drafter kind ''"),
        ("lookahead", "unknown drafter kind 'lookahead'; known: model, ngram, early-exit"),
        ("early-exits", "did you mean 'early-exit'"),
        ("ngram:gamma", "'gamma' is not key=value"),
        ("ngram:ngram_n=x", "ngram_n must be an integer, got 'x'"),
        ("ngram:ngram_n=2,ngram_min=3", "ngram needs 1 <= ngram_min <= ngram_n"),
        ("ngram:gamma=0", "gamma must be an integer >= 1"),
        ("ngram:ngram_nn=2", "unknown key 'ngram_nn' for ngram (did you mean 'ngram_n'?)"),
        ("ngram:heads=x", "heads is a knob of drafter eagle / medusa, not of ngram"),
        ("ngram:tree=2,1", "drafter ngram cannot draft a token tree"),
        ("early-exit:exit_layer=-1", "exit_layer must be >= 0"),
        ("early-exit:exit_layer=1,exit_layer=2", "exit_layer is given twice"),
        ("early-exit:tree=2,x", "bad tree '2,x'"),
        ("early-exit:tree=4,2,1,adaptive=1", "adaptive and tree exclude each other"),
        ("early-exit:adaptive=yes", "adaptive must be 0 or 1"),
        # The benchmark's older spellings: refused, with the new one in the message.
        ("early_exit:layer=10", "layer=10 is the old spelling: write exit_layer=N"),
        ("eagle:path=runs/e", "path=runs/e is the old spelling: write model=NAME"),
        ("ngram:max_n=4", "max_n=4 is the old spelling: write ngram_n=N"),
        ("early-exit:tree=4-2-1", "write the branching with commas, e.g. 4,2,1"),
        ("early-exit:dyntree=4-4-16", "write tree=dynamic:depth=D,top_k=K,nodes=N"),
        ("eagle:heads=h,weights=int4", f"weights must be one of {_WEIGHT_CHOICES}, got 'int4'"),
        ("eagle:heads=h,weights=", f"weights must be one of {_WEIGHT_CHOICES}, got ''"),
        ("medusa:heads=h,weights=int8", "weights is a knob of drafter eagle, not of medusa"),
    ],
)
def test_bad_specs_name_the_problem(text, message):
    with pytest.raises(ValueError) as error:
        registry.parse_spec(text)
    assert str(error.value).startswith(f"drafter spec {text!r}: ")
    assert message in str(error.value)


_STATIC, _DYNAMIC = TreeSpec((2, 2)), DynamicTreeSpec(4, 4, 12)
_NOT_COUNT = "lookup_ngram_min must be an integer >= 1, got "


@pytest.mark.parametrize(
    "text, tree",
    [
        ("4,2,1", TreeSpec((4, 2, 1))),
        ("dynamic:depth=4,top_k=4,nodes=12", _DYNAMIC),
        ("2,2,lookup=3", LookupTreeSpec(_STATIC, 3)),  # n-grams 3..1, the defaults
        ("2,2,lookup=3,lookup_ngram=2", LookupTreeSpec(_STATIC, 3, max_ngram=2)),
        ("2,2,lookup=3,lookup_ngram_min=2", LookupTreeSpec(_STATIC, 3, min_ngram=2)),
        ("2,2,lookup=3,lookup_ngram_min=3", LookupTreeSpec(_STATIC, 3, min_ngram=3)),
        (
            "dynamic:depth=4,top_k=4,nodes=12,lookup=8,lookup_ngram=5,lookup_ngram_min=2",
            LookupTreeSpec(_DYNAMIC, 8, max_ngram=5, min_ngram=2),
        ),
        ("2,2,lookup=3,lookup_ngram=1", LookupTreeSpec(_STATIC, 3, max_ngram=1, min_ngram=1)),
    ],
)
def test_tree_text_reads_back(text, tree):
    """Text -> tree -> text and tree -> text -> tree: every field of a lookup branch, its
    shortest n-gram (min_ngram) too, survives (the keys at their defaults are left out)."""
    assert registry.parse_tree(text) == tree
    assert registry.tree_text(tree) == text
    assert registry.parse_tree(registry.tree_text(tree)) == tree
    # A drafter spec made in Python reads back from its text, its tree with it.
    spec = registry.DrafterSpec.create("early-exit", tree=tree)
    assert spec.text() == f"early-exit:tree={text}"
    assert registry.parse_spec(spec.text()) == spec


def test_tree_lookup_keys_in_any_order():
    tree = LookupTreeSpec(_STATIC, 3, max_ngram=4, min_ngram=2)
    assert registry.parse_tree("2,2,lookup_ngram_min=2,lookup_ngram=4,lookup=3") == tree
    assert registry.parse_tree(" 2,2, lookup = 3 , lookup_ngram = 4,lookup_ngram_min=2") == tree


@pytest.mark.parametrize(
    "tree, message",
    [
        ("2,2,lookup=3,lookup_ngram_min=x", _NOT_COUNT + "'x'"),
        ("2,2,lookup=3,lookup_ngram_min=1.5", _NOT_COUNT + "'1.5'"),
        ("2,2,lookup=3,lookup_ngram_min=", _NOT_COUNT + "''"),
        ("2,2,lookup=3,lookup_ngram_min=0", _NOT_COUNT + "'0'"),
        ("2,2,lookup=3,lookup_ngram_min=-1", _NOT_COUNT + "'-1'"),
        ("2,2,lookup=3,lookup_ngram=0", "lookup_ngram must be an integer >= 1, got '0'"),
        ("2,2,lookup_ngram_min=2", "lookup_ngram_min without lookup=L"),
        (
            "2,2,lookup_ngram=4,lookup_ngram_min=2",
            "lookup_ngram, lookup_ngram_min without lookup=L",
        ),
        (
            "2,2,lookup=3,lookup_ngram_min=4",
            "needs lookup_ngram_min <= lookup_ngram (the longest n-gram, default 3), got 4 > 3",
        ),
        (
            "2,2,lookup=3,lookup_ngram=2,lookup_ngram_min=3",
            "needs lookup_ngram_min <= lookup_ngram (the longest n-gram, default 3), got 3 > 2",
        ),
        ("2,2,lookup=3,lookup_ngram_min=2,lookup_ngram_min=2", "lookup_ngram_min is given twice"),
        ("2,2,lookup=3,lookup_min=2", "expected branching like 3,2,1"),  # not a key
    ],
)  # fmt: skip
def test_bad_tree_lookup_keys_name_the_problem(tree, message):
    """Refused wherever a tree is read: `parse_tree` (specjax.generate's tree=, --tree, a
    config's tree) and inside a drafter spec, the tree quoted and the problem named."""
    with pytest.raises(ValueError) as error:
        registry.parse_tree(tree)
    assert str(error.value).startswith("bad tree ") and message in str(error.value)
    with pytest.raises(ValueError) as error:
        registry.parse_spec(f"early-exit:tree={tree},exit_layer=2")
    assert str(error.value).startswith(f"drafter spec 'early-exit:tree={tree},exit_layer=2': ")
    assert message in str(error.value)


def test_labels():
    assert registry.parse_spec("ngram").label() == "ngram(n<=3)"
    assert registry.parse_spec("ngram:ngram_min=2,ngram_n=4").label() == "ngram(n=2..4)"
    spec = registry.parse_spec("early-exit:tree=4,2,1")
    assert spec.label(num_layers=30) == "early-exit(layer 10), tree 4,2,1"
    assert registry.parse_spec("eagle:heads=runs/e_1024/drafter,adaptive=1").label() == (
        "eagle(e_1024), adaptive γ"
    )
    assert registry.parse_spec("eagle:heads=e,draft_vocab=8,weights=int8").label() == (
        "eagle(e), draft vocab 8, int8 weights"
    )
    assert registry.parse_spec("model:model=qwen2.5-coder-0.5b-instruct").label() == (
        "qwen2.5-coder-0.5b-instruct"
    )


# --------------------------------------------------------------------------------------
# Defaults: one per knob, in the registry


def test_defaults_live_in_the_registry():
    assert registry.default_exit_layer(30) == 10 and registry.default_exit_layer(2) == 1
    # The experiment config's drafter group is the registry's knobs with their defaults
    # (the draft model is the default experiment's pair, not a knob default).
    group = experiment.base_config().drafter.to_dict()
    assert group.pop("kind") == "model" and group.pop("model") == "qwen2.5-coder-0.5b-instruct"
    assert group == {k: v for k, v in registry.knob_defaults().items() if k != "model"}
    # The CLI's knob flags default to "not given", so the registry's defaults apply.
    args = cli.build_parser().parse_args(_CLI + ["--drafter", "early-exit"])
    assert (args.ngram, args.exit_layer, args.heads, args.draft) == (None, None, None, None)
    assert set(cli.KNOB_FLAGS) <= set(registry.knob_defaults())  # the rest: --drafter kind:k=v


# --------------------------------------------------------------------------------------
# CLI, config and benchmark spec: the same name builds the same drafter

_CLI = ["generate", "--target", "random:six", "--prompt", "p", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def six_layers():
    """A random 6-layer target, where a third (2) and a quarter (1) of the layers differ."""
    with pytest.MonkeyPatch.context() as patch:
        shape = pairs.RANDOM_SHAPES["tiny"].replace(num_layers=6)
        patch.setitem(pairs.RANDOM_SHAPES, "six", shape)
        yield pairs.load_model("random:six", "float32", 0)
        pairs.clear_cache()


def _config(**overrides):
    config = experiment.base_config()
    config.target = "random:six"
    config.prompts.name = experiment.SYNTHETIC
    config.dtype = "float32"  # the CLI's default, and the fixture's target
    return experiment.finalize(config, overrides)


def _same(a, b) -> bool:
    if isinstance(a, NgramDrafter):
        return a == b
    (drafter_a, params_a), (drafter_b, params_b) = a, b
    if type(drafter_a) is not type(drafter_b):
        return False
    if hasattr(drafter_a, "model") and drafter_a.model.config != drafter_b.model.config:
        return False
    leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True)
    )


@pytest.mark.parametrize(
    "cli_args, config, spec",
    [
        (["--drafter", "early-exit"], {"drafter.kind": "early-exit"}, "early-exit"),
        (
            ["--drafter", "early_exit", "--exit-layer", "4"],
            {"drafter.kind": "early_exit", "drafter.exit_layer": 4},
            "early-exit:exit_layer=4",
        ),
        (["--drafter", "early-exit:exit_layer=3"], {"drafter.kind": "early-exit",
          "drafter.exit_layer": 3}, "early_exit:exit_layer=3"),
        (["--drafter", "ngram"], {"drafter.kind": "ngram"}, "ngram"),
        (["--drafter", "ngram", "--ngram", "5"], {"drafter.kind": "ngram", "drafter.ngram_n": 5},
         "ngram:ngram_n=5"),
    ],
)  # fmt: skip
def test_cli_config_and_bench_build_the_same_drafter(six_layers, cli_args, config, spec):
    via_cli = cli.make_drafter(cli.build_parser().parse_args(_CLI + cli_args), six_layers, None)
    via_config = pairs.load_pair(_config(**config)).drafter
    via_bench = speedup.parse_drafter_spec(spec, six_layers.pair).drafter
    assert _same(via_cli, via_config) and _same(via_cli, via_bench)


def test_early_exit_default_is_a_third_everywhere(six_layers):
    """The same `early-exit` with no layer: 2 of 6 layers on the CLI, in a config, in a
    benchmark spec and among training's untrained baselines (the CLI and training used a
    quarter, 1 layer, before the registry)."""
    via_cli = cli.make_drafter(
        cli.build_parser().parse_args(_CLI + ["--drafter", "early-exit"]), six_layers, None
    )
    pair = pairs.load_pair(_config(**{"drafter.kind": "early-exit"}))
    via_bench = speedup.parse_drafter_spec("early-exit", six_layers.pair).drafter
    settings = training_config.finalize(training_config.base_config(), "eval.compare=early-exit")
    baselines = training_experiment.baseline_drafters(settings, six_layers)
    assert list(baselines) == ["early-exit(layer 2)"]
    for drafter in (via_cli, pair.drafter, via_bench, baselines["early-exit(layer 2)"]):
        assert drafter[0].model.config.num_layers == 2
    assert pair.label == "random:six / early-exit(layer 2)"


def test_heads_by_name_everywhere(six_layers, tmp_path):
    folder = save_heads(tmp_path / "eagle", *init_heads("eagle", *six_layers.pair))
    via_cli = cli.make_drafter(
        cli.build_parser().parse_args(_CLI + ["--drafter", "eagle", "--heads", str(folder)]),
        six_layers,
        None,
    )
    via_config = pairs.load_pair(
        _config(**{"drafter.kind": "eagle", "drafter.heads": str(folder)})
    ).drafter
    via_bench = speedup.parse_drafter_spec(f"eagle:heads={folder}", six_layers.pair).drafter
    assert _same(via_cli, via_config) and _same(via_cli, via_bench)


def test_eagle_weights_everywhere(six_layers, tmp_path):
    """weights=int8 builds the same heads drafting with int8 weights from a spec, a config and
    a benchmark spec; the default (and weights=float) builds the drafter the key did not
    exist for."""
    folder = save_heads(tmp_path / "eagle", *init_heads("eagle", *six_layers.pair))
    plain, _ = registry.build(f"eagle:heads={folder}", six_layers.pair)
    same, _ = registry.build(f"eagle:heads={folder},weights=float", six_layers.pair)
    int8, int8_params = registry.build(f"eagle:heads={folder},weights=int8", six_layers.pair)
    assert plain.weights == "float" and same == plain
    assert int8.weights == "int8" and dataclasses.replace(int8, weights="float") == plain
    via_config = pairs.load_pair(
        _config(
            **{"drafter.kind": "eagle", "drafter.heads": str(folder), "drafter.weights": "int8"}
        )
    ).drafter
    via_bench = speedup.parse_drafter_spec(f"eagle:heads={folder},weights=int8", six_layers.pair)
    for built in (via_config, via_bench.drafter):
        assert built[0] == int8 and _same(built, (int8, int8_params))


def test_build_errors(six_layers):
    target = six_layers.pair
    with pytest.raises(ValueError, match="exit_layer must be in \\[1, 5\\]"):
        registry.build("early-exit:exit_layer=6", target)
    with pytest.raises(ValueError, match="drafter eagle needs heads="):
        registry.build("eagle", target)
    with pytest.raises(ValueError, match="drafter model needs model="):
        registry.build("model", target)
    with pytest.raises(ValueError, match="needs draft=\\(Model, params\\)"):
        registry.build("model:model=random:tiny", target)
    with pytest.raises(ValueError, match="only applies to drafter kind model, not ngram"):
        registry.build("ngram", target, draft=target)
    # The CLI: a knob flag of another kind, decoding keys in --drafter.
    for extra, message in [
        (["--drafter", "ngram", "--exit-layer", "2"], "--exit-layer does not apply to"),
        (["--drafter", "ngram:gamma=3"], "give gamma, adaptive and tree as --gamma"),
        (["--drafter", "medusa"], "--drafter medusa needs --heads FOLDER or NAME"),
        (["--drafter", "ngram:ngram_n=2", "--ngram", "4"], "ngram_n is set twice, by --ngram"),
    ]:
        with pytest.raises(SystemExit, match=message):
            cli.make_drafter(cli.build_parser().parse_args(_CLI + extra), six_layers, None)

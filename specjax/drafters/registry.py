"""Drafters by name: one registry of kinds, their knobs and defaults, one spec syntax.

A drafter is named the same way wherever a user names one: the CLI's ``--drafter``, an
experiment config's ``drafter`` group, a benchmark's ``--drafter`` spec and training's
``eval.compare``. All of them resolve the name here and build the drafter with `build`, so
``early-exit`` is the same drafter (same exit layer) everywhere.

Kinds and their knobs (a knob's name is its spec key and its config key ``drafter.<name>``):

    model       a separate draft model           model=<name, path, hub id, random:<shape>>
    ngram       prompt lookup, no weights        ngram_n=3 (longest n-gram), ngram_min=1
    early-exit  the target's first layers        exit_layer=0 (0 = a third of the target's)
    eagle       trained EAGLE heads              heads=<folder or name (heads.resolve_heads)>,
                                                 draft_vocab=0 (N: the N most frequent tokens),
                                                 weights=float (int8: weight-only int8 drafting)
    medusa      trained Medusa heads             heads=..., draft_vocab=0

``early-exit`` is the canonical spelling; ``early_exit`` is accepted as an alias (older
benchmark specs and training configs wrote it), here and nowhere else.

Spec syntax: ``kind[:key=value,...]``, keys being the kind's knobs and the decoding keys
``gamma`` (draft length), ``adaptive`` (0/1: per-row draft length up to gamma), ``tree``
and ``name`` (a label for tables)::

    ngram:ngram_n=4,gamma=8
    early-exit:exit_layer=10,tree=4,2,1
    early-exit:tree=dynamic:depth=4,top_k=4,nodes=16
    eagle:heads=runs/eagle_smollm_1024/drafter,gamma=3

Tree syntax (one, shared with ``specjax.generate(tree=...)``, the CLI's ``--tree`` and the
configs' ``tree``): static branching per level ``4,2,1``, or EAGLE-2's dynamic tree
``dynamic:depth=4,top_k=4,nodes=16``; either may end in ``,lookup=L``: a prompt-lookup
branch of L copied tokens grafted onto the drafter's tree (`tree.LookupTreeSpec`), optionally
with ``,lookup_ngram=N`` and ``,lookup_ngram_min=M``, the longest and shortest n-gram it
matches (default 3 and 1, as the ngram drafter's ngram_n and ngram_min). Inside a spec a tree
is written the same way: its value holds commas, so the items after ``tree=`` that are not
keys of the spec continue it::

    eagle:heads=<dir>,tree=dynamic:depth=4,top_k=4,nodes=12,lookup=6,draft_vocab=32768
The older benchmark forms ``tree=4-2-1`` and ``dyntree=4-4-16`` are refused with the new
spelling in the message (no stored result re-reads them: they only named table rows).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specjax.decoding.tree import AnyTreeSpec, DynamicTreeSpec, LookupTreeSpec, parse_tree_spec
from specjax.models.quantize import DRAFT_WEIGHTS

__all__ = [
    "ALIASES",
    "DECODING_KEYS",
    "KINDS",
    "DrafterKind",
    "DrafterSpec",
    "Knob",
    "build",
    "canonical_kind",
    "default_exit_layer",
    "knob_defaults",
    "parse_spec",
    "parse_tree",
    "spec_from_config",
    "tree_text",
]


@dataclasses.dataclass(frozen=True)
class Knob:
    """One setting of a drafter kind: its name (spec key and config key), default and type,
    and for a knob that takes one of a few words, those words (`choices`)."""

    name: str
    default: int | str
    help: str
    choices: tuple[str, ...] = ()

    @property
    def type(self) -> type:
        return type(self.default)


@dataclasses.dataclass(frozen=True)
class DrafterKind:
    """A drafter kind: its knobs, and whether it can draft a token tree (which today needs a
    drafter that implements `Drafter.propose_tree`: kinds model, early-exit and eagle)."""

    name: str
    help: str
    knobs: tuple[Knob, ...] = ()
    drafts_trees: bool = False


_HEADS = Knob(
    "heads",
    "",
    "heads saved by specjax.drafters.heads.save_heads: a folder, or a name of "
    "heads published to the specjax cache (experiments/train_draft.py --name)",
)
_DRAFT_VOCAB = Knob(
    "draft_vocab", 0, "draft over the N tokens most frequent in the training answers (0: all)"
)
_WEIGHTS = Knob(
    "weights",
    "float",
    "the head's matrices as drafting reads them: float (in the target's dtype) or int8 "
    "(weight-only, per-column scales: about half the bytes per draft step in bfloat16)",
    choices=DRAFT_WEIGHTS,
)

KINDS: dict[str, DrafterKind] = {
    kind.name: kind
    for kind in (
        DrafterKind(
            "model",
            "a separate draft model",
            (Knob("model", "", "draft model: registered name, checkpoint path, hub id"),),
            drafts_trees=True,
        ),
        DrafterKind(
            "ngram",
            "prompt lookup: continue the latest earlier match of the newest n-gram",
            (
                Knob("ngram_n", 3, "longest n-gram matched"),
                Knob("ngram_min", 1, "shortest n-gram matched"),
            ),
        ),
        DrafterKind(
            "early-exit",
            "self-speculation: the target's first exit_layer layers, its norm and LM head",
            (Knob("exit_layer", 0, "layers that draft; 0 = a third of the target's"),),
            drafts_trees=True,
        ),
        DrafterKind(
            "eagle",
            "trained EAGLE heads on the target's features",
            (_HEADS, _DRAFT_VOCAB, _WEIGHTS),
            drafts_trees=True,
        ),
        DrafterKind(
            "medusa",
            "trained Medusa heads on the target's last hidden state",
            (_HEADS, _DRAFT_VOCAB),
        ),
    )
}
ALIASES = {"early_exit": "early-exit"}
# Keys of a spec that say how to draft rather than what drafts: they are the CLI's --gamma,
# --adaptive-gamma and --tree, and a config's gamma, adaptive_gamma and tree.
DECODING_KEYS = ("gamma", "adaptive", "tree", "name")


def default_exit_layer(num_layers: int) -> int:
    """The early-exit layer when none is given: a third of the target's depth (at least 1).

    A third, not a quarter: the shallower exit drafts faster, but an untrained early exit
    agrees with the target too rarely at a quarter for the saved step to pay (measured on
    SmolLM2-135M in docs/benchmarks.md, where layer 10 of 30 is the reference setting).
    """
    return max(1, num_layers // 3)


def canonical_kind(kind: str) -> str:
    """The canonical name of a drafter kind (``early_exit`` -> ``early-exit``).

    Raises:
      ValueError: an unknown kind, naming the known ones and the closest match.
    """
    name = ALIASES.get(str(kind).strip(), str(kind).strip())
    if name not in KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}{_suggest(name, KINDS)}; " + _known())
    return name


def knob_defaults() -> dict[str, int | str]:
    """Every knob of every kind with its default: the ``drafter`` group of a config."""
    return {knob.name: knob.default for kind in KINDS.values() for knob in kind.knobs}


def parse_tree(text: str) -> AnyTreeSpec:
    """The one tree syntax: ``4,2,1`` or ``dynamic:depth=4,top_k=4,nodes=16``, either
    optionally with a prompt-lookup branch, ``...,lookup=6`` (`tree.LookupTreeSpec`; its
    n-gram lengths ``lookup_ngram=N``, ``lookup_ngram_min=M``)."""
    text = str(text).strip()
    if "-" in text and not text.startswith("dynamic:") and "," not in text:
        raise ValueError(f"bad tree {text!r}: write the branching with commas, e.g. 4,2,1")
    return parse_tree_spec(text)


def tree_text(tree: AnyTreeSpec) -> str:
    """The text `parse_tree` reads back as ``tree`` (a lookup branch's n-gram keys only
    where they differ from their defaults)."""
    if isinstance(tree, LookupTreeSpec):
        ngram = ""
        if tree.max_ngram != LookupTreeSpec.max_ngram:
            ngram += f",lookup_ngram={tree.max_ngram}"
        if tree.min_ngram != LookupTreeSpec.min_ngram:
            ngram += f",lookup_ngram_min={tree.min_ngram}"
        return f"{tree_text(tree.tree)},lookup={tree.lookup}{ngram}"
    if isinstance(tree, DynamicTreeSpec):
        return f"dynamic:depth={tree.depth},top_k={tree.top_k},nodes={tree.num_nodes}"
    return ",".join(str(b) for b in tree.branching)


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
    """A drafter by name: what `build` makes, and how it drafts.

    Fields:
      kind: a canonical kind name (a key of KINDS).
      knobs: every knob of the kind, defaults filled in (exit_layer 0 stays 0: it resolves
        against the target in `build`).
      gamma: draft length; None = the caller's (a tree's depth replaces it).
      adaptive: per-row draft length up to gamma.
      tree: a token tree, or None for a linear draft.
      name: a label given by the user ("" = none).
    """

    kind: str
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    gamma: int | None = None
    adaptive: bool = False
    tree: AnyTreeSpec | None = None
    name: str = ""

    @classmethod
    def create(
        cls,
        kind: str,
        *,
        gamma: int | None = None,
        adaptive: bool = False,
        tree: str | AnyTreeSpec | None = None,
        name: str = "",
        **knobs: Any,
    ) -> DrafterSpec:
        """A checked spec from a kind (or its alias) and values of that kind's knobs.

        Raises:
          ValueError: unknown kind or knob (a knob of another kind names that kind), a bad
            value, or a tree for a kind that cannot draft one.
        """
        kind = canonical_kind(kind)
        own = {knob.name: knob for knob in KINDS[kind].knobs}
        values = {key: knob.default for key, knob in own.items()}
        for key, value in knobs.items():
            if key in own:
                values[key] = _coerce(own[key], value)
                continue
            owners = [k.name for k in KINDS.values() if key in {n.name for n in k.knobs}]
            if owners:
                raise ValueError(
                    f"{key} is a knob of drafter {' / '.join(owners)}, not of {kind} "
                    f"(whose knobs are: {', '.join(own) or 'none'})"
                )
            allowed = (*own, *DECODING_KEYS)
            raise ValueError(
                f"drafter {kind}: unknown key {key!r}{_suggest(key, allowed)}; keys: "
                + ", ".join(allowed)
            )
        _check_values(kind, values)
        if isinstance(tree, str):
            tree = parse_tree(tree) if tree.strip() else None
        if tree is not None and not KINDS[kind].drafts_trees:
            trees = [k for k, v in KINDS.items() if v.drafts_trees]
            raise ValueError(
                f"drafter {kind} cannot draft a token tree (tree={tree_text(tree)}): trees need "
                f"a draft model, kinds {', '.join(trees)}"
            )
        if gamma is not None and (isinstance(gamma, bool) or int(gamma) < 1):
            raise ValueError(f"drafter {kind}: gamma must be an integer >= 1, got {gamma!r}")
        if tree is not None and adaptive:
            raise ValueError(f"drafter {kind}: adaptive and tree exclude each other")
        gamma = tree.depth if tree is not None else (None if gamma is None else int(gamma))
        return cls(kind, values, gamma, bool(adaptive), tree, str(name))

    def text(self) -> str:
        """The spec as text that `parse_spec` reads back: knobs that differ from their
        defaults, then gamma, adaptive and tree (last: its value holds commas)."""
        defaults = knob_defaults()
        items = [f"{k}={v}" for k, v in self.knobs.items() if v != defaults[k]]
        if self.gamma is not None and self.tree is None:
            items.append(f"gamma={self.gamma}")
        if self.adaptive:
            items.append("adaptive=1")
        if self.name:
            items.append(f"name={self.name}")
        if self.tree is not None:
            items.append(f"tree={tree_text(self.tree)}")
        return self.kind + (":" + ",".join(items) if items else "")

    def label(self, *, num_layers: int | None = None, draft_name: str = "") -> str:
        """A human-readable label: ``ngram(n<=3)``, ``early-exit(layer 10), tree 4,2,1``,
        ``eagle(eagle_smollm_1024)``, the draft model's name; the given ``name`` if any.

        Args:
          num_layers: the target's depth, to show the exit layer that exit_layer=0 means.
          draft_name: the draft model's display name (kind model; default its spec).
        """
        if self.name:
            return self.name
        k = self.knobs
        if self.kind == "model":
            text = draft_name or _short_path(str(k["model"]))
        elif self.kind == "ngram":
            low = int(k["ngram_min"])
            text = f"ngram(n<={k['ngram_n']})" if low == 1 else f"ngram(n={low}..{k['ngram_n']})"
        elif self.kind == "early-exit":
            layer = int(k["exit_layer"])
            if not layer and num_layers is not None:
                layer = default_exit_layer(num_layers)
            text = f"early-exit(layer {layer or 'L/3'})"
        else:
            text = f"{self.kind}({_heads_name(str(k['heads']))})"
            if int(k["draft_vocab"]):
                text += f", draft vocab {k['draft_vocab']}"
            if k.get("weights", "float") != "float":
                text += f", {k['weights']} weights"
        if self.tree is not None:
            text += f", tree {tree_text(self.tree)}"
        if self.adaptive:
            text += ", adaptive γ"
        return text


def parse_spec(text: str) -> DrafterSpec:
    """A `DrafterSpec` from ``kind[:key=value,...]`` (see the module docstring).

    Raises:
      ValueError: the message quotes the spec and names the problem (unknown kind or key
        with the closest match, an item that is not key=value, a bad value, a bad tree).
    """
    kind_text, _, rest = str(text).strip().partition(":")
    try:
        kind = canonical_kind(kind_text)
        own = {knob.name for knob in KINDS[kind].knobs}
        options: dict[str, str] = {}
        last = ""
        for item in rest.split(",") if rest else []:
            key, eq, value = (part.strip() for part in item.partition("="))
            if eq and key in (*knob_defaults(), *DECODING_KEYS, *_OLD_KEYS):
                if key in options:
                    raise ValueError(f"{key} is given twice")
                options[key], last = value, key
            elif last == "tree":  # a tree's own commas: "tree=4,2,1", "tree=dynamic:depth=4,..."
                options["tree"] += "," + item.strip()
            elif not eq:
                raise ValueError(f"{item.strip()!r} is not key=value")
            else:
                allowed = (*own, *DECODING_KEYS)
                raise ValueError(
                    f"unknown key {key!r} for {kind}{_suggest(key, allowed)}; keys: "
                    + ", ".join(allowed)
                )
        for old, new in _OLD_KEYS.items():
            if old in options:
                raise ValueError(f"{old}={options[old]} is the old spelling: write {new}")
        if options.get("adaptive", "0") not in ("0", "1"):
            raise ValueError(f"adaptive must be 0 or 1, got {options['adaptive']!r}")
        knobs = {key: value for key, value in options.items() if key not in DECODING_KEYS}
        gamma = options.get("gamma")
        return DrafterSpec.create(
            kind,
            gamma=None if gamma is None else _int("gamma", gamma),
            adaptive=options.get("adaptive") == "1",
            tree=options.get("tree"),
            name=options.get("name", ""),
            **knobs,
        )
    except ValueError as error:
        raise ValueError(f"drafter spec {text!r}: {error}") from None


def spec_from_config(drafter: Mapping[str, Any], **decoding: Any) -> DrafterSpec:
    """The spec of an experiment config's ``drafter`` group (``kind`` plus every kind's
    knobs, as `knob_defaults`): the kind's own knobs are read, the others ignored (a sweep
    over kinds keeps one base group). ``decoding``: gamma, adaptive, tree, as `create`."""
    kind = canonical_kind(drafter["kind"])
    own = {knob.name for knob in KINDS[kind].knobs}
    return DrafterSpec.create(kind, **decoding, **{k: drafter[k] for k in own if k in drafter})


def build(
    spec: DrafterSpec | str,
    target: tuple[Any, Any],
    *,
    draft: tuple[Any, Any] | None = None,
    target_sha256: str | None = None,
) -> Any:
    """What `specjax.generate` takes as the drafter of ``spec`` for ``target`` (Model, params).

    Args:
      spec: a `DrafterSpec`, or spec text for `parse_spec`.
      target: the target (Model, params); early-exit and heads are built from its weights.
      draft: kind model only: the draft (Model, params), loaded by the caller (the CLI, the
        experiment runner and the benchmarks each load models their own way: names,
        random:<shape>, dtype). Returned as is.
      target_sha256: the target checkpoint's sha256, when known: heads trained on another
        checkpoint's features are refused (see `heads.load_heads`).

    Returns:
      model: ``draft``; ngram: an NgramDrafter; early-exit: (DraftModelDrafter, params) over
      the target's first exit_layer layers (0 = `default_exit_layer`); eagle / medusa:
      (heads drafter, params) loaded from the ``heads`` folder or name
      (`heads.resolve_heads`: named heads live under `heads.heads_home()`); eagle drafts
      with its ``weights`` (`EagleDrafter.weights`: int8 quantizes them where
      `specjax.generate` converts the head, once per weights).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    model, params = target
    k = spec.knobs
    if spec.kind == "model":
        if not str(k["model"]).strip():
            raise ValueError("drafter model needs model=<draft model name or path>")
        if draft is None:
            raise ValueError(f"drafter model ({k['model']!r}) needs draft=(Model, params), loaded")
        return draft
    if draft is not None:
        raise ValueError(f"a draft model only applies to drafter kind model, not {spec.kind}")
    if spec.kind == "ngram":
        from specjax.drafters.ngram import NgramDrafter

        return NgramDrafter(int(k["ngram_n"]), int(k["ngram_min"]))
    if spec.kind == "early-exit":
        from specjax.drafters.early_exit import early_exit_drafter

        layer = int(k["exit_layer"]) or default_exit_layer(model.config.num_layers)
        return early_exit_drafter(model, params, layer)
    from specjax.drafters.heads import load_heads

    if not str(k["heads"]).strip():
        raise ValueError(
            f"drafter {spec.kind} needs heads=<folder or name of saved {spec.kind} heads>"
        )
    drafter = load_heads(
        k["heads"], model, params, target_sha256=target_sha256, draft_vocab=int(k["draft_vocab"])
    )
    if drafter[0].kind != spec.kind:
        raise ValueError(f"{k['heads']} holds {drafter[0].kind} heads, not {spec.kind}")
    if spec.kind == "eagle" and k["weights"] != "float":
        drafter = (dataclasses.replace(drafter[0], weights=k["weights"]), drafter[1])
    return drafter


# --------------------------------------------------------------------------------------
# Helpers.

# Keys of the benchmark's older drafter specs, refused with their new spelling.
_OLD_KEYS = {
    "layer": "exit_layer=N",
    "path": "model=NAME (kind model) or heads=FOLDER (eagle, medusa)",
    "max_n": "ngram_n=N",
    "min_n": "ngram_min=N",
    "dyntree": "tree=dynamic:depth=D,top_k=K,nodes=N",
}


def _known() -> str:
    aliases = ", ".join(f"{a} = {c}" for a, c in ALIASES.items())
    return f"known: {', '.join(KINDS)} (alias: {aliases})"


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be an integer, got {value!r}") from None


def _coerce(knob: Knob, value: Any) -> int | str:
    if knob.type is int:
        return _int(knob.name, value)
    text = str(value)
    if knob.choices and text not in knob.choices:
        raise ValueError(
            f"{knob.name} must be one of {', '.join(map(repr, knob.choices))}, got {text!r}"
        )
    return text


def _check_values(kind: str, k: Mapping[str, Any]) -> None:
    """Range checks that need no target (an exit layer beyond the target's depth fails in
    build; so do a missing draft model or heads folder, which a caller may fill in later
    from its own flags)."""
    if kind == "ngram" and not 1 <= int(k["ngram_min"]) <= int(k["ngram_n"]):
        raise ValueError(
            f"ngram needs 1 <= ngram_min <= ngram_n, got ngram_min={k['ngram_min']}, "
            f"ngram_n={k['ngram_n']}"
        )
    if kind in ("eagle", "medusa") and int(k["draft_vocab"]) < 0:
        raise ValueError(f"draft_vocab must be >= 0 (0 = every token), got {k['draft_vocab']}")
    if kind == "early-exit" and int(k["exit_layer"]) < 0:
        raise ValueError(f"exit_layer must be >= 0 (0 = a third), got {k['exit_layer']}")


def _short_path(spec: str) -> str:
    return Path(spec).name if ("/" in spec and Path(spec).expanduser().exists()) else spec


def _heads_name(path: str) -> str:
    """A short name for a heads folder: ``runs/eagle_smollm_1024/drafter`` -> its run's name."""
    p = Path(path)
    return p.parent.name if p.name == "drafter" and p.parent.name else p.name

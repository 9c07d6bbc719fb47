"""Command line: generate with a real model, speculatively or not.

    python -m specjax.cli generate --target qwen2.5-coder-1.5b-instruct \
        --draft qwen2.5-coder-0.5b-instruct --gamma 4 --prompt "Write quicksort in Python" \
        --max-new-tokens 128 [--temperature 0.7] [--seed 0] [--raw] [--json]

Drafters are those of `specjax.drafters.registry`, by the same names and defaults as in
experiment configs: `--drafter ngram|early-exit|eagle|medusa|model`, knobs as flags (--ngram,
--exit-layer, --heads, --draft) or in the spec (`--drafter early-exit:exit_layer=10`).
Trained heads (experiments/train_draft.py) draft with `--drafter eagle|medusa --heads PATH`,
or by the name they were published under (`train_draft.py --name=NAME`): `--heads NAME`.
Without --draft (and without another --drafter) it decodes autoregressively. In the text
output, accepted draft tokens are green and tokens the target produced itself (the first
token, corrections after a rejection, bonus tokens after a full acceptance) are blue, as in
the figure of Leviathan et al. (rejected drafts are never emitted, so they are not shown).

Quiet by default: progress bars, the result and warnings; `--verbose` shows the libraries'
INFO logs, and the traceback of an error (otherwise one line: `error: <message>`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from specjax import console

GREEN, BLUE, RESET = "\033[32m", "\033[34m", "\033[0m"
# The knob flags: the registry's knobs of each kind (specjax.drafters.registry.KINDS).
KNOB_FLAGS = {"model": "--draft", "ngram_n": "--ngram", "exit_layer": "--exit-layer",
              "heads": "--heads"}  # fmt: skip


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of every token's text: equal fingerprints mean one shared vocabulary."""
    digest = hashlib.sha256()
    for token_id in range(tokenizer.vocab_size):
        digest.update(tokenizer.id_to_token(token_id).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.hexdigest()


def check_same_tokenizer(target_tokenizer: Any, draft_tokenizer: Any, names: Sequence[str]):
    if vocabulary_fingerprint(target_tokenizer) != vocabulary_fingerprint(draft_tokenizer):
        raise SystemExit(
            f"error: the draft {names[1]!r} and the target {names[0]!r} use different "
            f"tokenizers ({draft_tokenizer.vocab_size} vs {target_tokenizer.vocab_size} "
            "tokens, or different token texts); speculative decoding needs one vocabulary"
        )


def colored(tokenizer: Any, token_ids: Sequence[int], from_draft: Sequence[bool]) -> str:
    decoder = tokenizer.stream_decoder()
    pieces = []
    for token_id, drafted in zip(token_ids, from_draft, strict=True):
        text = decoder.push(int(token_id))
        if text:
            pieces.append(f"{GREEN if drafted else BLUE}{text}{RESET}")
    return "".join(pieces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m specjax.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a continuation of one prompt")
    gen.add_argument("--target", required=True, help="model name, .gguf path or hub id")
    gen.add_argument("--draft", help="draft model (name/path) for --drafter model")
    gen.add_argument(
        "--drafter",
        help="model | ngram | early-exit | eagle | medusa, or a spec such as "
        "early-exit:exit_layer=10 (specjax.drafters.registry); default: model if --draft",
    )
    gen.add_argument("--gamma", type=int, default=4, help="draft tokens per target call")
    gen.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    gen.add_argument("--raw", action="store_true", help="feed the prompt without chat template")
    gen.add_argument("--max-new-tokens", type=int, required=True)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    gen.add_argument("--ngram", type=int, help="longest n-gram (--drafter ngram; default 3)")
    gen.add_argument("--exit-layer", type=int, help="--drafter early-exit (default: L // 3)")
    gen.add_argument(
        "--heads", help="trained heads: a folder, or a published name (--drafter eagle|medusa)"
    )
    gen.add_argument(
        "--tree",
        help="token tree (--drafter model, early-exit or eagle; greedy or sampled): static "
        "branching per level, e.g. 3,2,1, or an EAGLE-2 dynamic tree, e.g. "
        "dynamic:depth=4,top_k=4,nodes=16; either with ,lookup=L for a branch of L tokens "
        "copied by prompt lookup (,lookup_ngram=N / ,lookup_ngram_min=M: the longest / "
        "shortest n-gram it matches, default 3 / 1)",
    )
    gen.add_argument(
        "--adaptive-gamma",
        action="store_true",
        help="per-row draft length up to --gamma, following the acceptance",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.add_argument("--verbose", action="store_true", help=console.VERBOSE_HELP)
    return parser


def make_drafter(args, target, draft_name: str | None):
    """The drafter that --drafter (a registry spec) and the knob flags name, for `target`."""
    from specjax.checkpoints import load_model
    from specjax.drafters import registry

    text = args.drafter or ("model" if draft_name else None)
    if text is None:
        return None
    spec = registry.parse_spec(text)
    if spec.gamma is not None or spec.adaptive or spec.tree is not None or spec.name:
        raise SystemExit("error: --drafter names the drafter and its knobs; give gamma, "
                         "adaptive and tree as --gamma, --adaptive-gamma, --tree")  # fmt: skip
    flags = {"model": draft_name, "ngram_n": args.ngram, "exit_layer": args.exit_layer,
             "heads": args.heads}  # fmt: skip
    own = {knob.name for knob in registry.KINDS[spec.kind].knobs}
    for knob, value in flags.items():
        if value is not None and knob not in own:
            raise SystemExit(f"error: {KNOB_FLAGS[knob]} does not apply to --drafter {spec.kind}")
    given = {knob: value for knob, value in flags.items() if value is not None}
    for knob in [k for k in given if f"{k}=" in text]:
        raise SystemExit(f"error: {knob} is set twice, by {KNOB_FLAGS[knob]} and --drafter {text}")
    spec = registry.DrafterSpec.create(spec.kind, **{**spec.knobs, **given})  # checks values
    if spec.kind == "model":
        if not spec.knobs["model"]:
            raise SystemExit("error: --drafter model needs --draft NAME")
        draft = load_model(spec.knobs["model"], args.dtype)
        if draft.tokenizer is not None and target.tokenizer is not None:
            names = [args.target, spec.knobs["model"]]
            check_same_tokenizer(target.tokenizer, draft.tokenizer, names)
        return registry.build(spec, target.pair, draft=draft.pair)
    if spec.kind in ("eagle", "medusa") and not spec.knobs["heads"]:
        raise SystemExit(
            f"error: --drafter {spec.kind} needs --heads FOLDER or NAME (trained heads)"
        )
    return registry.build(spec, target.pair, target_sha256=target.metadata.get("sha256"))


def generate_command(args) -> dict[str, Any]:
    import jax

    import specjax
    from specjax.checkpoints import load_model
    from specjax.models import layers

    target = load_model(args.target, args.dtype)
    tokenizer = target.tokenizer
    if tokenizer is None:
        raise SystemExit(f"error: no tokenizer could be read from {args.target!r}")
    drafter = make_drafter(args, target, args.draft)
    if args.raw:
        prompt_ids = tokenizer.encode(args.prompt)
    else:
        prompt_ids = tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    sampling = specjax.Sampling.create(args.temperature, top_k=args.top_k, top_p=args.top_p)
    start = time.perf_counter()
    out = specjax.generate(
        target.pair, drafter, [prompt_ids], sampling=sampling, gamma=args.gamma,
        max_new_tokens=args.max_new_tokens, eos_ids=tokenizer.eos_ids, seed=args.seed,
        tree=args.tree or None,
        adaptive_gamma=args.adaptive_gamma,
    )  # fmt: skip
    out = jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    token_ids = out.token_lists()[0]
    from_draft = np.asarray(out.from_draft)[0, : len(token_ids)].tolist()
    speculative = drafter is not None
    stats = {
        "target_calls": int(out.target_calls[0]),
        # Tokens emitted per verification call; None when no call was made (strict JSON).
        "tau": _finite(out.tau) if speculative else 1.0,
        "acceptance_tau": _finite(out.acceptance_tau) if speculative else 1.0,
        "acceptance_per_position": out.acceptance_per_position.tolist() if speculative else [],
        "accepted_draft_tokens": int(sum(from_draft)),
        "seconds": seconds,  # includes compilation: the CLI runs one generation
        "stop_reason": out.stop_reason_names()[0],
        "prompt_tokens": len(prompt_ids),
        "kernels": layers.kernel_policies(args.dtype),  # what decoded it (auto: per backend)
    }
    return {
        "token_ids": token_ids,
        "text": tokenizer.decode(token_ids, skip_special=True),
        "stats": stats,
        "_from_draft": from_draft,
        "_tokenizer": tokenizer,
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def check_args(args: argparse.Namespace) -> None:
    """Everything checkable before a model is loaded: fail in a second, not after a load."""
    import specjax
    from specjax.api import as_rng
    from specjax.models import layers

    if args.gamma < 1:
        console.fail(f"--gamma must be >= 1, got {args.gamma}")
    if args.max_new_tokens < 1:
        console.fail(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # undecodable bytes in argv arrive as surrogates
        byte = ord(args.prompt[error.start]) - 0xDC00
        console.fail(
            f"--prompt is not UTF-8 text (byte 0x{byte:02x} at character {error.start}): "
            "pass the prompt as UTF-8"
        )
    try:
        specjax.Sampling.create(args.temperature, top_k=args.top_k, top_p=args.top_p)
        as_rng(args.seed)
        layers.check_kernel_environment()
    except (ValueError, TypeError) as error:
        console.fail(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure_logging(args.verbose)
    check_args(args)
    result = console.guarded(generate_command, lambda: args.verbose)(args)
    tokenizer, from_draft = result.pop("_tokenizer"), result.pop("_from_draft")
    if args.json:
        print(json.dumps(result))
        return 0
    use_color = sys.stdout.isatty()
    text = colored(tokenizer, result["token_ids"], from_draft) if use_color else result["text"]
    print(text)
    stats = result["stats"]
    print(
        f"\n[{len(result['token_ids'])} tokens, {stats['target_calls']} target calls, "
        f"tau {stats['tau'] or math.nan:.2f}, {stats['seconds']:.1f} s incl. compile, "
        f"stop: {stats['stop_reason']}]"
        + (f"  {GREEN}draft{RESET} {BLUE}target{RESET}" if use_color else ""),  # fmt: skip
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training data for drafters: text the target generated itself, with its hidden states.

Dimension legend: N sequences, T = P + M positions per sequence (padded), P longest prompt,
M generated tokens per prompt (max), D target width, B batch.

The EAGLE/Medusa/DistillSpec recipe: prompts (ShareGPT by default) are answered by the target
(`specjax.generate`), then the target reads prompt + answer once more to record its last hidden
state at every position. Drafters are trained on these features: the target's next-token
distribution at position t is softmax(lm_head(hidden[t])), so the hidden states are also the
distillation labels, at D floats per position instead of V.

A `DraftData` is saved as one .npz and reused by every run (and every resume) with the same
data settings. Batches are a pure function of (seed, step): a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PROMPT_SOURCES = ("sharegpt", "sharegpt_turns", "stdlib", "random")


@dataclasses.dataclass
class DraftData:
    """Target-generated sequences and the target's features.

    Fields:
      tokens: int32[N, T], prompt then generated tokens, 0 after `lengths`.
      lengths: int32[N], valid tokens per row.
      gen_start: int32[N], position of the first generated token (= prompt length).
      hidden: [N, T, D] in the target's dtype (bfloat16 for a bf16 target: its hidden states
        are bf16 values, so storing them as float32 would double the file and the device
        copy for no information), the target's last hidden state (after its final norm) at
        each position; garbage after `lengths`. `batch` hands them out as float32. None for
        data built without features (`data.features="online"`: the training step computes
        them, `objectives.with_target_features`; `with_features` adds them).
      info: JSON-serialisable description (source, target, sizes).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    gen_start: np.ndarray
    hidden: np.ndarray | None
    info: dict[str, Any]

    @property
    def num_sequences(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def max_new_tokens(self) -> int:
        return int(self.info["max_new_tokens"])

    @property
    def num_generated_tokens(self) -> int:
        return int(np.sum(self.lengths - self.gen_start))

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic .npz write (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays, info = {}, dict(self.info)
        if self.hidden is not None:
            hidden = np.asarray(self.hidden)
            # .npz has no bfloat16: its bits are stored as uint16 and the dtype in `info`.
            info["hidden_dtype"] = str(hidden.dtype)
            arrays["hidden"] = hidden.view(np.uint16) if hidden.dtype == jnp.bfloat16 else hidden
        np.savez(
            tmp,
            tokens=self.tokens,
            lengths=self.lengths,
            gen_start=self.gen_start,
            info=np.asarray(json.dumps(info)),
            **arrays,
        )
        os.replace(tmp, path)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> DraftData:
        with np.load(path) as f:
            info = json.loads(str(f["info"]))
            hidden = f["hidden"] if "hidden" in f.files else None
            if hidden is not None and info.get("hidden_dtype") == "bfloat16":
                hidden = hidden.view(jnp.bfloat16)
            return DraftData(
                tokens=f["tokens"],
                lengths=f["lengths"],
                gen_start=f["gen_start"],
                hidden=hidden,
                info=info,
            )

    def split(self, num_eval: int) -> tuple[DraftData, DraftData]:
        """(train, eval): the last `num_eval` sequences are held out."""
        if not 0 <= num_eval < self.num_sequences:
            raise ValueError(f"num_eval must be in [0, {self.num_sequences}), got {num_eval}")
        cut = self.num_sequences - num_eval

        def part(rows: slice) -> DraftData:
            return DraftData(
                self.tokens[rows],
                self.lengths[rows],
                self.gen_start[rows],
                None if self.hidden is None else self.hidden[rows],
                {**self.info, "rows": f"{rows.start}:{rows.stop}"},
            )

        return part(slice(0, cut)), part(slice(cut, self.num_sequences))

    def on_device(self) -> DraftData:
        """The same data with its arrays on the default device (batches gather there)."""
        arrays = jax.device_put((self.tokens, self.lengths, self.gen_start, self.hidden))
        return DraftData(*arrays, info=self.info)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = {
            "tokens": self.tokens[indices],
            "lengths": self.lengths[indices],
            "gen_start": self.gen_start[indices],
        }
        if self.hidden is not None:
            # The objectives compute in float32 (bf16 storage is exact, see the class).
            batch["hidden"] = self.hidden[indices].astype(np.float32)
        return batch

    def with_features(self, target: tuple[Any, Any], batch_size: int = 16) -> DraftData:
        """This data with the target's features (`target_features`), computed if it has none."""
        if self.hidden is not None:
            return self
        hidden = target_features(target, np.asarray(self.tokens), batch_size)
        return dataclasses.replace(self, hidden=hidden)


def batch_indices(num_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of batch `step`: epoch e = step // (N // B) uses its own seeded permutation.

    A pure function of (seed, step), so a resumed run draws the same batches."""
    steps_per_epoch = num_rows // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_rows} training sequences")
    epoch, index = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[index * batch_size : (index + 1) * batch_size]


# --------------------------------------------------------------------------------------------
# Prompts.


def sharegpt_prompts(
    tokenizer: Any, num_prompts: int, max_prompt_tokens: int, seed: int, every_turn: bool = False
) -> list[list[int]]:
    """Chat-formatted first user turns of ShareGPT conversations that fit max_prompt_tokens;
    with `every_turn`, any of their user turns (each alone; 54,111 against 15,614)."""
    from specjax.eval.prompts import load_prompts, select_subset, sharegpt_every_turn

    # ~70% of ShareGPT first turns fit 96 SmolLM2 tokens: 4x candidates is plenty, where the
    # set has them.
    every = sharegpt_every_turn() if every_turn else load_prompts("sharegpt")
    candidates = select_subset(every, min(max(4 * num_prompts, 64), len(every)), seed)
    prompts = []
    for prompt in candidates:
        ids = tokenizer.encode_chat([{"role": "user", "content": prompt.text}])
        if len(ids) <= max_prompt_tokens:
            prompts.append(ids)
        if len(prompts) == num_prompts:
            return prompts
    raise ValueError(
        f"only {len(prompts)} of {len(candidates)} ShareGPT prompts fit {max_prompt_tokens} "
        f"tokens; {num_prompts} were asked for: raise data.max_prompt_tokens"
    )


def stdlib_prompts(
    tokenizer: Any, num_prompts: int, max_prompt_tokens: int, seed: int
) -> list[list[int]]:
    """Raw chunks of the Python standard library's sources (no chat template), one per file,
    chosen by a seeded shuffle of the sorted file list."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)
    order = np.random.default_rng(seed).permutation(len(files))
    prompts = []
    for i in order:
        text = files[i].read_text(errors="replace")
        # Skip the license/docstring header: start at the first function definition.
        start = max(text.find("\ndef "), 0)
        ids = tokenizer.encode(text[start : start + 4 * max_prompt_tokens])[:max_prompt_tokens]
        if len(ids) >= 8:
            prompts.append(ids)
        if len(prompts) == num_prompts:
            return prompts
    raise ValueError(f"the standard library at {root} gave only {len(prompts)} prompts")


def random_prompts(
    vocab_size: int, num_prompts: int, max_prompt_tokens: int, seed: int
) -> list[list[int]]:
    """Random token prompts of random lengths (for random-weight targets in tests)."""
    rng = np.random.default_rng([seed, 1234])
    lengths = rng.integers(max(1, max_prompt_tokens // 4), max_prompt_tokens + 1, num_prompts)
    return [rng.integers(0, vocab_size, n).tolist() for n in lengths]


# --------------------------------------------------------------------------------------------
# Generation and features.


def generate_continuations(
    target: tuple[Any, Any],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    eos_ids: Sequence[int],
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The target's own answers, in length-sorted batches (short prompts together, so rows of
    a batch stop at similar steps). Every batch is padded to the longest prompt of all, so one
    program is compiled for the whole run: with the default bucket of 16, a 128-token prompt
    budget compiled ~7 programs (~25 s each on an H200 for a 1.5B target at batch 256), which
    was most of the generation time."""
    import specjax

    longest = max(len(p) for p in prompts)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    answers: list[list[int]] = [[] for _ in prompts]
    sampling = specjax.Sampling.create(temperature)
    for start in range(0, len(prompts), batch_size):
        rows = order[start : start + batch_size]
        batch = [list(prompts[i]) for i in rows]
        # Pad the last batch with copies so every call has the same batch size.
        batch += [batch[-1]] * (batch_size - len(batch))
        out = specjax.generate(
            target,
            None,
            batch,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            seed=seed + start,
            prompt_bucket=longest,
        )
        for i, tokens in zip(rows, out.token_lists(), strict=False):
            answers[i] = tokens
        if progress:
            progress(len(rows))
    return answers


def target_features(
    target: tuple[Any, Any],
    tokens_NxT: np.ndarray,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The target's hidden states [N, T, D] over whole sequences, batch by batch, in the
    dtype the target computes them in."""
    model, params = target
    N, T = tokens_NxT.shape
    features = jax.jit(functools.partial(forward_hidden, model))
    pad = (-N) % batch_size
    padded = np.concatenate([tokens_NxT, np.zeros((pad, T), tokens_NxT.dtype)])
    chunks = []
    for start in range(0, len(padded), batch_size):
        chunks.append(np.asarray(features(params, jnp.asarray(padded[start : start + batch_size]))))
        if progress:
            progress(min(batch_size, N - start))
    return np.concatenate(chunks)[:N]


def forward_hidden(model: Any, params: Any, tokens_BxT: jax.Array) -> jax.Array:
    """The target's last hidden state [B, T, D] at every position of whole sequences (one
    forward from an empty cache; [B, T, (n + 1) D] for a model with feature layers,
    `Model.with_feature_layers`), in its compute dtype: what `DraftData.hidden` stores, and
    what `objectives.with_target_features` computes inside a training step. Only the hidden
    states are returned, so under jit XLA drops the unused [B, T, V] logits."""
    B, T = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cache = model.init_cache(B, T, dtype=jax.tree.leaves(params)[0].dtype)
    _, hidden_BxTxD, _ = model.forward(params, tokens_BxT, positions_BxT, cache)
    return hidden_BxTxD


def build_data(
    target: tuple[Any, Any],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_ids: Sequence[int] = (),
    batch_size: int = 16,
    seed: int = 0,
    info: dict[str, Any] | None = None,
    progress: bool = True,
    features: bool = True,
) -> DraftData:
    """Generates the target's answers to `prompts` and records its features (see module);
    `features=False` records only the tokens (the training step computes the features)."""
    from tqdm.auto import tqdm

    P = max(len(p) for p in prompts)
    T = P + max_new_tokens
    with tqdm(total=len(prompts), desc="target answers", disable=not progress) as bar:
        answers = generate_continuations(
            target,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            eos_ids=eos_ids,
            seed=seed,
            progress=bar.update,
        )
    N = len(prompts)
    tokens_NxT = np.zeros((N, T), np.int32)
    lengths_N = np.zeros((N,), np.int32)
    gen_start_N = np.zeros((N,), np.int32)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        row = list(prompt) + list(answer)
        tokens_NxT[i, : len(row)] = row
        lengths_N[i], gen_start_N[i] = len(row), len(prompt)
    hidden_NxTxD = None
    if features:
        with tqdm(total=N, desc="target features", disable=not progress) as bar:
            hidden_NxTxD = target_features(target, tokens_NxT, batch_size, bar.update)
    info = {
        **(info or {}),
        "num_sequences": N,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "width": T,
    }
    data = DraftData(tokens_NxT, lengths_N, gen_start_N, hidden_NxTxD, info)
    info["generated_tokens"] = data.num_generated_tokens
    return data


def data_key(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings a data file depends on (its cache key)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_build(
    path: str | os.PathLike,
    settings: dict[str, Any],
    build: Callable[[], DraftData],
    needs_features: bool = True,
) -> DraftData:
    """The data at `path` if it was built with the same `settings` (and holds features where
    `needs_features`), else builds and saves it. Data with features serves a run without."""
    path = Path(path)
    if path.is_file():
        data = DraftData.load(path)
        same = data.info.get("settings_key") == data_key(settings)
        if same and (data.hidden is not None or not needs_features):
            return data
        why = "other settings" if not same else "no features (data.features=online)"
        print(f"specjax: {path} was built with {why}; rebuilding", file=sys.stderr)
    data = build()
    data.info.update(settings=settings, settings_key=data_key(settings))
    data.save(path)
    return data

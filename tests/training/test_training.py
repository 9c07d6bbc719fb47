"""Drafter training: losses fall, resuming is bit-for-bit, the exported drafters decode exactly.

Everything runs on a tiny random target (vocabulary 64) with data it generated itself.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_LLAMA, random_model

import specjax
from specjax import Sampling
from specjax.checkpoints import LoadedModel
from specjax.decoding.state import DraftContext
from specjax.drafters import heads
from specjax.training import config as training_config
from specjax.training import data as data_lib
from specjax.training import experiment, objectives
from specjax.training.trainer import TrainSettings, make_eval_step, train

NUM_NEW = 12


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=50)


@pytest.fixture(scope="module")
def data(target):
    prompts = data_lib.random_prompts(TINY_LLAMA.vocab_size, 24, 10, seed=0)
    return data_lib.build_data(
        target, prompts, max_new_tokens=NUM_NEW, batch_size=8, temperature=1.0, progress=False
    )


# One settings object for every run below: the jitted step is cached per (loss, settings), so
# the decrease and resume tests of a kind share one compilation.
SETTINGS = TrainSettings(
    num_steps=30, batch_size=8, learning_rate=1e-2, warmup_steps=3, log_every=2, checkpoint_every=2
)


@pytest.fixture(scope="module")
def objectives_by_kind(target):
    return {kind: objective(kind, target) for kind in ("eagle", "medusa", "distill")}


def objective(kind, target):
    """(loss_fn, trainable, frozen) of each kind, freshly initialised."""
    model, params = target
    io = heads.target_io(params)
    if kind == "eagle":
        drafter, hp = heads.init_eagle(model, params, seed=1)
        return objectives.eagle_loss(drafter, NUM_NEW, cls_weight=1.0), hp["head"], {"io": io}
    if kind == "medusa":
        drafter, hp = heads.init_medusa(model, params, num_heads=2)
        return objectives.medusa_loss(drafter, NUM_NEW), hp["head"], {"io": io}
    draft, draft_params = random_model(TINY_LLAMA.replace(num_layers=1), seed=2)
    trainable, frozen = objectives.split_trees(draft_params.to_pure_dict(), ("blocks",))
    loss_fn = objectives.distill_loss(draft, TINY_LLAMA, NUM_NEW)
    return loss_fn, trainable, {"draft": frozen, "io": io}


def test_data_layout(data):
    assert data.tokens.shape == (24, 10 + NUM_NEW)
    assert data.hidden.shape == (24, 10 + NUM_NEW, TINY_LLAMA.d_model)
    assert np.all(data.lengths - data.gen_start == NUM_NEW)  # no EOS: full answers
    assert data.num_generated_tokens == 24 * NUM_NEW


def test_answers_do_not_depend_on_the_batching(target, data):
    """Greedy answers are a function of the prompt alone: batches of 8 (each padded to the
    longest prompt of all, one compiled program) and of 5 (the last one padded with copies)
    give the same rows."""
    prompts = data_lib.random_prompts(TINY_LLAMA.vocab_size, 10, 10, seed=3)
    common = dict(max_new_tokens=6, temperature=0.0, eos_ids=(), seed=0)
    by_8 = data_lib.generate_continuations(target, prompts, batch_size=8, **common)
    by_5 = data_lib.generate_continuations(target, prompts, batch_size=5, **common)
    assert by_8 == by_5
    assert all(len(a) == 6 for a in by_8)


def test_bfloat16_features_are_stored_exactly(tmp_path):
    """A bf16 target's features are kept in bf16 (they are bf16 values: float32 storage would
    double the file for nothing), survive the .npz round trip bit for bit, and reach the
    objectives as float32."""
    target = random_model(TINY_LLAMA, seed=50, dtype=jnp.bfloat16)
    prompts = data_lib.random_prompts(TINY_LLAMA.vocab_size, 6, 8, seed=1)
    data = data_lib.build_data(target, prompts, max_new_tokens=4, batch_size=6, progress=False)
    assert data.hidden.dtype == jnp.bfloat16
    loaded = data_lib.DraftData.load(data.save(tmp_path / "d.npz"))
    assert loaded.hidden.dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded.hidden.view(np.uint16), data.hidden.view(np.uint16))
    batch = loaded.batch(np.arange(3))
    assert batch["hidden"].dtype == np.float32
    np.testing.assert_array_equal(batch["hidden"], np.asarray(data.hidden[:3], np.float32))
    # Float32 targets keep float32 features.
    full = data_lib.DraftData.load(
        data_lib.build_data(
            random_model(TINY_LLAMA, seed=50),
            prompts,
            max_new_tokens=4,
            batch_size=6,
            progress=False,
        ).save(tmp_path / "f.npz")
    )
    assert full.hidden.dtype == np.float32


@pytest.mark.parametrize("kind", ["eagle", "medusa", "distill"])
def test_training_decreases_the_loss(tmp_path, objectives_by_kind, data, kind):
    loss_fn, trainable, frozen = objectives_by_kind[kind]
    eval_fn = make_eval_step(loss_fn)
    full_batch = data.batch(np.arange(data.num_sequences))
    before = float(eval_fn(trainable, frozen, full_batch)["loss"])
    result = train(loss_fn, trainable, frozen, data, SETTINGS, tmp_path, progress=False)
    after = float(eval_fn(result.params, frozen, full_batch)["loss"])
    print(f"{kind}: loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before  # seeded; the observed drop is larger (margin for versions)


def test_eagle_unrolled_passes_replay_drafting(target):
    """Pass k of the unrolled EAGLE training computes what the drafter computes at draft step k
    (same inputs, same attention): feed the drafted tokens back as the continuation and the
    per-step draft distributions are reproduced."""
    model, params = target
    drafter, head_params = heads.init_eagle(model, params, seed=6)
    B, S, K = 2, 24, 3
    lengths = np.array([7, 11])
    tokens = np.random.default_rng(0).integers(0, TINY_LLAMA.vocab_size, (B, S))
    positions = np.broadcast_to(np.arange(S), (B, S))
    _, hidden, _ = model.forward(params, tokens, positions, model.init_cache(B, S))
    context = DraftContext(jnp.asarray(tokens), jnp.asarray(lengths), target_hidden=hidden)
    state = drafter.init(head_params, tokens, lengths, S)
    sampling = Sampling.create(temperature=1.0)
    drafted, probs, _ = drafter.propose(head_params, state, context, K, sampling, jax.random.key(3))
    continued = tokens.copy()
    for b in range(B):
        continued[b, lengths[b] : lengths[b] + K] = np.asarray(drafted[b])
    # Pass-1 features past L - 2 belong to the old continuation; the replayed steps never
    # attend to them (the mask under test).
    passes = objectives.eagle_passes(
        drafter, head_params, hidden[:, :-1], jnp.asarray(continued[:, 1:]), K
    )
    for k in range(1, K + 1):
        entries = lengths + k - 3
        features = passes[k - 1][np.arange(B), entries]
        expected = jax.nn.softmax(heads.lm_logits(head_params["io"], features, TINY_LLAMA))
        np.testing.assert_allclose(probs[:, k - 1], expected, atol=1e-5, err_msg=f"step {k}")


def test_batches_depend_only_on_seed_and_step():
    first = [data_lib.batch_indices(20, 8, seed=3, step=s) for s in range(6)]
    again = [data_lib.batch_indices(20, 8, seed=3, step=s) for s in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    epoch = np.concatenate(first[:2])
    assert len(set(epoch.tolist())) == 16  # no repeats within an epoch
    assert not np.array_equal(first[0], data_lib.batch_indices(20, 8, seed=4, step=0))


def test_resume_equals_uninterrupted_run(tmp_path, objectives_by_kind, data):
    """Stop at step 4 (checkpointed), pretend the killed run logged step 6, restart: the
    params at step 8 equal those of an uninterrupted run bit for bit and the log reads as one
    run. (`stop_at_step` ends both at step 8 of the 30 scheduled.)"""
    loss_fn, trainable, frozen = objectives_by_kind["eagle"]  # EAGLE: its noise uses the rng
    common = dict(progress=False, stop_at_step=8)
    whole = train(loss_fn, trainable, frozen, data, SETTINGS, tmp_path / "a", **common)

    parts = tmp_path / "b"
    first = train(loss_fn, trainable, frozen, data, SETTINGS, parts, progress=False, stop_at_step=4)
    assert first.step == 4
    with (parts / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": 6, "loss": -1.0}) + "\n")  # past the last checkpoint
    resumed = train(loss_fn, trainable, frozen, data, SETTINGS, parts, **common)
    assert resumed.start_step == 4 and resumed.step == 8
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert records[2]["loss"] > 0  # the killed run's record was dropped
    # A run restarted at its end does nothing more.
    again = train(loss_fn, trainable, frozen, data, SETTINGS, parts, **common)
    assert again.start_step == 8 and again.history == []


def tiny_config(kind, **overrides):
    settings = {
        "kind": kind,
        "target": "random:tiny",
        "data.source": "random",
        "data.num_prompts": 16,
        "data.num_eval": 8,
        "data.max_prompt_tokens": 8,
        "data.max_new_tokens": 8,
        "data.batch_size": 8,
        "train.num_steps": 4,
        "train.batch_size": 8,
        "train.log_every": 2,
        "train.checkpoint_every": 2,
        "draft.num_layers": 1,
        "eval.per_set": 2,
        "eval.max_new_tokens": 12,
        "eval.compare": "ngram",
        **overrides,
    }
    return training_config.finalize(training_config.base_config(), settings)


@pytest.mark.parametrize("kind", ["medusa", "distill"])
def test_experiment_end_to_end(tmp_path, kind):
    config = tiny_config(kind)
    run = experiment.run_training(config, tmp_path, progress=False)
    assert run.train.step == 4
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "data.npz").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and "eval_top1" in records[-1]
    rows = experiment.compare(config, run, log=lambda _: None)
    assert [row["exact"] for row in rows] == [True] * len(rows)
    assert len(rows) == 2  # trained, ngram
    # The export is reloadable the way users load it.
    target = run.target
    drafter = experiment.load_trained(run.drafter_path, target)
    if kind == "medusa":  # warm start from the export: its first step starts where it ended
        warm = tiny_config(kind, **{"head.init_from": str(run.drafter_path)})
        again = experiment.run_training(warm, tmp_path / "warm", progress=False)
        assert again.train.history[0]["loss"] < run.train.history[0]["loss"]
    assert type(drafter[0]).__name__ == ("MedusaDrafter" if kind == "medusa" else "Model")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    reference = specjax.generate(target.pair, None, prompts, max_new_tokens=10)
    out = specjax.generate(target.pair, drafter, prompts, gamma=2, max_new_tokens=10)
    assert out.token_lists() == reference.token_lists()


def test_cli_selects_head_drafters(tmp_path, target):
    """`--drafter eagle|medusa --heads PATH` builds the saved heads for the target."""
    from specjax import cli

    model, params = target
    loaded = LoadedModel("random:test", model, params, {"synthetic": True})
    for kind in ("eagle", "medusa"):
        drafter, head_params = heads.init_heads(kind, model, params)
        path = heads.save_heads(tmp_path / kind, drafter, head_params)
        args = cli.build_parser().parse_args(
            ["generate", "--target", "x", "--prompt", "p", "--max-new-tokens", "4",
             "--drafter", kind, "--heads", str(path)]
        )  # fmt: skip
        made, _ = cli.make_drafter(args, loaded, None)
        assert made == drafter
    args = cli.build_parser().parse_args(
        ["generate", "--target", "x", "--prompt", "p", "--max-new-tokens", "4",
         "--drafter", "medusa"]
    )  # fmt: skip
    with pytest.raises(SystemExit, match="--heads"):
        cli.make_drafter(args, loaded, None)


@pytest.mark.parametrize("kind", ["eagle_smollm", "medusa_smollm", "distill_tiny"])
def test_shipped_configs_parse(kind):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "configs" / f"train_{kind}.py"
    spec = importlib.util.spec_from_file_location(f"train_{kind}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("train.num_steps=7")
    assert config.train.num_steps == 7 and config.target == "smollm2-135m-instruct"
    for point in module.get_sweep():
        training_config.finalize(module.get_config(), point)


def test_config_errors():
    with pytest.raises(training_config.ConfigError, match="kind"):
        tiny_config("lora")
    with pytest.raises(training_config.ConfigError, match="head.num_heads"):
        tiny_config("medusa", **{"head.num_heads": 2, "eval.gamma": 3})
    with pytest.raises(training_config.ConfigError, match="unknown config key"):
        tiny_config("eagle", **{"train.num_stepz": 3})
    with pytest.raises(training_config.ConfigError, match="head.train_vocab must be >= 0"):
        tiny_config("eagle", **{"head.train_vocab": -1})
    with pytest.raises(training_config.ConfigError, match="not to a distilled draft model"):
        tiny_config("distill", **{"head.train_vocab": 16})


def test_time_budget_stop_and_device_data_resume_exactly(tmp_path, objectives_by_kind, data):
    """A run stopped by its time budget checkpoints where it stopped; resumed with the data
    on the device (batches gathered there), it ends bit for bit where the uninterrupted
    host-data run ends."""
    import dataclasses

    loss_fn, trainable, frozen = objectives_by_kind["eagle"]
    whole = train(loss_fn, trainable, frozen, data, SETTINGS, tmp_path / "a", progress=False,
                  stop_at_step=4)  # fmt: skip
    on_device = dataclasses.replace(SETTINGS, data_on_device=True)
    parts = tmp_path / "b"
    cut = train(loss_fn, trainable, frozen, data, on_device, parts, progress=False,
                stop_after_s=0.0)  # fmt: skip
    assert cut.step == 1 and cut.start_step == 0
    records = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]  # the stop is logged, off the log_every grid
    resumed = train(loss_fn, trainable, frozen, data, on_device, parts, progress=False,
                    stop_at_step=4)  # fmt: skip
    assert resumed.start_step == 1 and resumed.step == 4
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_prompts_are_cached_by_their_settings(tmp_path, monkeypatch):
    """The tokenized prompts land beside the data file and are reused while the settings that
    made them hold; other settings tokenize afresh."""
    config = tiny_config("medusa", **{"data.path": str(tmp_path / "d" / "x.npz")})
    loaded = experiment.load_model(config.target)
    first = experiment.load_prompts(config, loaded, tmp_path)
    path = experiment.prompts_path(config, tmp_path)
    assert path == tmp_path / "d" / "x.prompts.json" and path.is_file()

    def refuse(*_):
        raise AssertionError("tokenized again although the cache matches")

    monkeypatch.setattr(experiment, "_prompts", refuse)
    assert experiment.load_prompts(config, loaded, tmp_path) == first
    other = tiny_config("medusa", **{"data.path": str(tmp_path / "d" / "x.npz"),
                                     "data.seed": 5})  # fmt: skip
    with pytest.raises(AssertionError, match="tokenized again"):
        experiment.load_prompts(other, loaded, tmp_path)


def test_sharegpt_turns_source_draws_from_every_user_turn(monkeypatch):
    """data.source = "sharegpt_turns" is a valid source and draws its prompts from every user
    turn (`prompts.sharegpt_every_turn`); "sharegpt" from the first turns only."""
    from specjax.eval import prompts as prompt_sets

    def fake(texts):
        return lambda *args, **kwargs: [
            prompt_sets.Prompt(id=f"p{i}", category="sharegpt", turns=(t,), source="sharegpt")
            for i, t in enumerate(texts)
        ]

    monkeypatch.setattr(prompt_sets, "load_prompts", fake(["first"] * 4))
    monkeypatch.setattr(prompt_sets, "sharegpt_every_turn", fake(["any turn"] * 4))

    class Tokenizer:
        def encode_chat(self, messages):
            return [len(messages[0]["content"])]

    sizes = {"data.num_prompts": 3, "data.num_eval": 1, "train.batch_size": 2}
    config = tiny_config("medusa", **{"data.source": "sharegpt_turns", **sizes})
    assert experiment._prompts(config, Tokenizer()) == [[8]] * 3  # len("any turn")
    config = tiny_config("medusa", **{"data.source": "sharegpt", **sizes})
    assert experiment._prompts(config, Tokenizer()) == [[5]] * 3  # len("first")
    with pytest.raises(training_config.ConfigError, match="data.source"):
        tiny_config("medusa", **{"data.source": "sharegpt_all"})


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_training_over_every_token_as_a_draft_vocabulary_is_full_training(target, data, kind):
    """A draft vocabulary of all V tokens scores exactly as the full LM head: same loss, same
    KL, same top-1 (every answer token is in it)."""
    loss_fn, trainable, frozen = objective(kind, target)
    every = {"io": heads.with_draft_vocab(frozen, range(TINY_LLAMA.vocab_size))["io"]}
    batch = data.batch(np.arange(8))
    rng = jax.random.key(3)
    _, full = loss_fn(trainable, frozen, batch, rng)
    _, restricted = loss_fn(trainable, every, batch, rng)
    assert full.keys() == restricted.keys()
    for name in full:
        np.testing.assert_allclose(restricted[name], full[name], rtol=1e-5, atol=1e-6)


def test_kl_and_agreement_over_a_draft_vocabulary():
    """Against numpy: the KL over a draft vocabulary is between the teacher's distribution
    restricted to it and renormalised and the student's; agreement needs the answer token
    in the vocabulary as well as equal argmaxes."""
    rng = np.random.default_rng(0)
    V, ids = 12, np.array([1, 4, 5, 9])
    teacher_V = rng.normal(size=(6, V)).astype(np.float32)
    student_Vd = rng.normal(size=(6, ids.size)).astype(np.float32)
    student_Vd[:3] = teacher_V[:3][:, ids]  # rows 0-2: the same argmax over the vocabulary
    answers = np.array([4, 4, 2, 1, 9, 5])  # row 2's answer lies outside it
    io = {"draft_ids": jnp.asarray(ids)}
    batch = {"tokens": jnp.asarray(answers)[None], "gen_start": jnp.zeros(1, jnp.int32),
             "lengths": jnp.full(1, answers.size, jnp.int32)}  # fmt: skip
    in_vocab = objectives.answers_in_vocab(
        io, batch, answers.size, TINY_LLAMA.replace(vocab_size=V)
    )
    kl, agree = objectives.kl_and_agreement(
        jnp.asarray(teacher_V[:, ids]), jnp.asarray(student_Vd), in_vocab[0]
    )

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(teacher_V)[:, ids]
    p = p / p.sum(-1, keepdims=True)  # restricted, renormalised
    q = softmax(student_Vd)
    np.testing.assert_allclose(kl, np.sum(p * np.log(p / q), -1), rtol=1e-5, atol=1e-6)
    same_argmax = np.argmax(p, -1) == np.argmax(q, -1)
    np.testing.assert_array_equal(agree, same_argmax & np.isin(answers, ids))
    assert agree[:2].all() and not agree[2]


def test_heads_trained_over_a_draft_vocabulary_draft_over_it(tmp_path):
    """head.train_vocab: the export records the vocabulary (the answers' most frequent tokens),
    loading drafts over it by default, and greedy decoding stays exact."""
    config = tiny_config("medusa", **{"head.train_vocab": 16})
    run = experiment.run_training(config, tmp_path, progress=False)
    assert heads.trained_vocab(run.drafter_path) == 16
    counts = np.load(run.drafter_path / heads.COUNTS_FILE)
    ids = heads.most_frequent(counts, 16)
    loaded = experiment.load_trained(run.drafter_path, run.target)
    np.testing.assert_array_equal(loaded[1]["io"]["draft_ids"], ids)
    np.testing.assert_array_equal(run.drafter[1]["io"]["draft_ids"], ids)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    reference = specjax.generate(run.target.pair, None, prompts, max_new_tokens=10)
    out = specjax.generate(run.target.pair, loaded, prompts, gamma=2, max_new_tokens=10)
    assert out.token_lists() == reference.token_lists()
    drafted = np.asarray(out.tokens)[np.asarray(out.from_draft, bool)]
    assert set(drafted.tolist()) <= set(ids.tolist())
    # An explicit draft_vocab still wins.
    wider = heads.load_heads(run.drafter_path, *run.target.pair, draft_vocab=32)
    assert wider[1]["io"]["draft_ids"].shape == (32,)


def test_eagle_run_checks_drafting_on_the_heldout_prompts(tmp_path):
    """An EAGLE run drafts its held-out prompts after training: α₁ drafting equals step 1
    teacher forced at the draft starts (float32, rows whose output equals the held-out
    answers), and the figures are saved beside the heads."""
    config = tiny_config("eagle", **{"eval.gamma": 2, "head.train_vocab": 24})
    run = experiment.run_training(config, tmp_path, progress=False)
    check = run.heldout_drafting
    assert check["gamma"] == 2 and check["prompts"] == 8
    assert check["rows_checked"] == 8 and check["drafts"] > 0  # float32: every row matches
    assert check["alpha_1 drafting"] == check["step 1 at draft starts"]
    saved = json.loads((run.drafter_path / "heads.json").read_text())
    assert saved["metadata"]["heldout_drafting"] == check
    medusa = experiment.run_training(tiny_config("medusa"), tmp_path / "m", progress=False)
    assert medusa.heldout_drafting is None


@pytest.mark.parametrize("kind", ["eagle", "medusa", "distill"])
def test_online_features_give_the_stored_loss_and_gradients(target, data, kind):
    """`data.features=online`: the step computes the target's features over its batch
    (`objectives.with_target_features`); in float32 its loss and gradients equal those over
    the stored features."""
    model, params = target
    loss_fn, trainable, frozen = objective(kind, target)
    online_fn = objectives.with_target_features(loss_fn, model)
    online_frozen = {**frozen, "target": model.decode_params(params)}
    batch = data.batch(np.arange(8))
    without = {k: v for k, v in batch.items() if k != "hidden"}
    rng = jax.random.key(3)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, batch, rng)
    (online_loss, _), online_grads = jax.value_and_grad(online_fn, has_aux=True)(
        trainable, online_frozen, without, rng
    )
    np.testing.assert_allclose(online_loss, loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(online_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_online_feature_runs_store_tokens_only_and_train_as_stored_runs(tmp_path):
    """An online EAGLE run saves its data without features, trains to the stored run's
    losses (float32), and still runs its held-out drafting check (features computed for the
    held-out rows). A stored run does not take the online run's file: it rebuilds it with
    features; an online run takes a file with features."""
    shared = {"data.path": str(tmp_path / "data.npz"), "eval.gamma": 2}
    online = experiment.run_training(
        tiny_config("eagle", **shared, **{"data.features": "online"}), tmp_path / "online",
        progress=False,
    )  # fmt: skip
    assert data_lib.DraftData.load(tmp_path / "data.npz").hidden is None
    check = online.heldout_drafting
    assert (
        check["rows_checked"] == 8 and check["alpha_1 drafting"] == check["step 1 at draft starts"]
    )
    stored = experiment.run_training(
        tiny_config("eagle", **shared), tmp_path / "stored", progress=False
    )
    assert data_lib.DraftData.load(tmp_path / "data.npz").hidden is not None
    losses = [[r["loss"] for r in run.train.history] for run in (online, stored)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    again = experiment.run_training(
        tiny_config("eagle", **shared, **{"data.features": "online"}), tmp_path / "again",
        progress=False,
    )  # fmt: skip
    assert data_lib.DraftData.load(tmp_path / "data.npz").hidden is not None  # not rebuilt
    np.testing.assert_allclose([r["loss"] for r in again.train.history], losses[0], rtol=1e-4)


def test_data_without_features_round_trips(tmp_path, target, data):
    """Data saved without features loads without them; `with_features` computes what
    `build_data` would have stored."""
    bare = data_lib.DraftData(data.tokens, data.lengths, data.gen_start, None, dict(data.info))
    loaded = data_lib.DraftData.load(bare.save(tmp_path / "bare.npz"))
    assert loaded.hidden is None and "hidden" not in loaded.batch(np.arange(2))
    np.testing.assert_array_equal(loaded.tokens, data.tokens)
    np.testing.assert_allclose(
        loaded.with_features(target, 8).hidden, data.hidden, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("features", ["stored", "online"])
def test_multi_layer_feature_heads_train_and_draft_exactly(tmp_path, features):
    """head.feature_layers (EAGLE-3): the data holds [(n + 1) D] features (or the step
    computes them), the head's fuse layer trains, the export reloads with its layers, drafts
    the target's own greedy output, and the held-out drafting check holds its identity."""
    config = tiny_config(
        "eagle", **{"head.feature_layers": "0", "data.features": features, "eval.gamma": 2}
    )
    run = experiment.run_training(config, tmp_path, progress=False)
    stored = data_lib.DraftData.load(tmp_path / "data.npz")
    D = TINY_LLAMA.d_model
    assert (stored.hidden is None) == (features == "online")
    if stored.hidden is not None:
        assert stored.hidden.shape[-1] == 2 * D
    losses = [r["loss"] for r in run.train.history]
    assert losses[-1] < losses[0]
    drafter, params = experiment.load_trained(run.drafter_path, run.target)
    assert drafter.feature_layers == (0,) and params["head"]["fuse"]["kernel"].shape == (2 * D, D)
    _, initial = heads.init_eagle(*run.target.pair, seed=config.head.seed, feature_layers=(0,))
    assert not np.allclose(params["head"]["fuse"]["kernel"], initial["head"]["fuse"]["kernel"])
    check = run.heldout_drafting
    assert (
        check["rows_checked"] == 8 and check["alpha_1 drafting"] == check["step 1 at draft starts"]
    )
    rows = experiment.compare(config, run, log=lambda _: None)
    assert [row["exact"] for row in rows] == [True] * len(rows)


def test_an_eagle1_export_starts_a_multi_layer_feature_run(tmp_path):
    """head.init_from of an EAGLE-1 export with head.feature_layers set: the run starts from
    the widened head (`heads.widen_to_feature_layers`). At learning rate 0 it stays there, so
    its held-out metrics are the EAGLE-1 head's (without feature noise: the same data, no
    random draws); an export of another decoder layer is still refused."""
    quiet = {"head.feature_noise": 0.0}
    eagle1 = experiment.run_training(
        tiny_config("eagle", **quiet), tmp_path / "eagle1", progress=False
    )
    warm_settings = {
        **quiet,
        "head.feature_layers": "0",
        "head.init_from": str(eagle1.drafter_path),
        "train.learning_rate": 0.0,
    }
    warm = experiment.run_training(
        tiny_config("eagle", **warm_settings), tmp_path / "warm", progress=False
    )
    before, after = eagle1.train.history[-1], warm.train.history[-1]
    for key in ("eval_loss", "eval_top1"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6)
    drafter, params = experiment.load_trained(warm.drafter_path, warm.target)
    assert drafter.feature_layers == (0,) and "fuse" in params["head"]
    other = tiny_config("eagle", **warm_settings, **{"head.ffn_dim": 8})
    with pytest.raises(ValueError, match="not the eagle heads configured here"):
        experiment.run_training(other, tmp_path / "other", progress=False)


def test_feature_layer_config_errors():
    with pytest.raises(training_config.ConfigError, match="head.feature_layers"):
        tiny_config("eagle", **{"head.feature_layers": "low"})
    with pytest.raises(training_config.ConfigError, match="eagle heads only"):
        tiny_config("medusa", **{"head.feature_layers": "0"})
    config = tiny_config("eagle", **{"head.feature_layers": "eagle3"})
    assert training_config.feature_layers(config, 28) == (1, 13, 24)


def test_advice_on_eagle3_inputs_without_replayed_steps():
    """An EAGLE-3-input head trained with unroll_steps = 1 gets a note (it drafts only its first
    token well); the replayed-step fine-tune, EAGLE-1 heads and Medusa get none."""
    eagle3 = tiny_config("eagle", **{"head.feature_layers": "eagle3"})
    (note,) = training_config.advice(eagle3)
    assert "head.unroll_steps=1" in note and "'eagle3'" in note
    fine_tune = tiny_config("eagle", **{"head.feature_layers": "0,1", "head.unroll_steps": 3})
    assert training_config.advice(fine_tune) == []
    assert training_config.advice(tiny_config("eagle")) == []
    assert training_config.advice(tiny_config("medusa")) == []


def test_h200_head_presets_parse():
    """Every preset of configs/train_heads_h200.py (the GPU recipe heads.sh runs) gives a
    locked, validated config; overrides apply on top; an unknown preset or key is refused by
    name."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "configs" / "train_heads_h200.py"
    spec = importlib.util.spec_from_file_location("train_heads_h200", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for preset in module.PRESETS:
        config = module.get_config(preset)
        assert config.is_locked and config.kind in ("eagle", "medusa"), preset
    eagle3 = module.get_config("smollm2-eagle3,train.num_steps=9")
    assert eagle3.train.num_steps == 9 and eagle3.head.feature_layers == "eagle3"
    assert eagle3.target == "smollm2-135m-instruct" and eagle3.data.features == "online"
    with pytest.raises(training_config.ConfigError, match="needs a preset"):
        module.get_config("smollm2-eagle4")
    with pytest.raises(training_config.ConfigError, match="unknown config key"):
        module.get_config("qwen-eagle,train.num_stepz=3")

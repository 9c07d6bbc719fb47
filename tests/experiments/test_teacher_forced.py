"""training.diagnostics (experiments/teacher_forced.py): drafting reproduces training's step
1. In float32 the first draft position's acceptance α₁ equals the head's teacher-forced
step-1 agreement at exactly the positions where drafts started (the identity the real-model
diagnosis rests on)."""

import pytest
from support import TINY_LLAMA, random_model

from specjax.drafters import heads
from specjax.training import data as data_lib
from specjax.training import diagnostics, objectives
from specjax.training.trainer import TrainSettings, train


@pytest.mark.parametrize("feature_layers", [(), (0,)])
def test_alpha_1_equals_step_1_at_the_draft_starts(tmp_path, feature_layers):
    """Also for an EAGLE-3 head (`feature_layers`: its data and checks read the target's
    multi-layer features)."""
    target = random_model(TINY_LLAMA, seed=50)
    model, params = target
    prompts = data_lib.random_prompts(TINY_LLAMA.vocab_size, 16, 10, seed=0)
    features = (model.with_feature_layers(feature_layers), params) if feature_layers else target
    data = data_lib.build_data(features, prompts, max_new_tokens=12, batch_size=16, progress=False)
    drafter, head_params = heads.init_eagle(model, params, seed=1, feature_layers=feature_layers)
    io = heads.target_io(params)
    settings = TrainSettings(num_steps=30, batch_size=8, learning_rate=1e-2, warmup_steps=3,
                             log_every=10, checkpoint_every=30)  # fmt: skip
    loss_fn = objectives.eagle_loss(drafter, 12, cls_weight=1.0)
    trained = train(loss_fn, head_params["head"], {"io": io}, data, settings, tmp_path,
                    progress=False).params  # fmt: skip
    params_ = {"head": trained, "io": io}
    check = diagnostics.drafting_check(
        target, drafter, params_, data, prompts, gamma=3, max_new_tokens=12
    )
    assert check["rows_checked"] == 16  # float32 greedy drafting reproduces the answers
    assert check["drafts"] > 16 and 0 < check["alpha_1 drafting"] < 1
    assert check["alpha_1 drafting"] == check["step 1 at draft starts"]
    # No position before the second can be drafted (entry p - 2 does not exist).
    agree = diagnostics.step1_agreement(drafter, params_, data)
    assert agree.shape == data.tokens.shape and not agree[:, :2].any()
    # The whole per-set report: teacher-forced steps, then the same drafting check.
    report = diagnostics.set_agreement(
        target, drafter, params_, prompts, max_new_tokens=12, steps=3, gamma=3
    )
    assert report["prompts"] == 16 and 0 < report["step 1"] < 1
    assert report["alpha_1 drafting"] == check["alpha_1 drafting"]
    assert set(report) >= {"step 2", "step 3", "step 1 at draft starts"}
    # Over a draft vocabulary (as heads trained with head.train_vocab draft) the identity
    # holds too: step 1 draws its token as drafting does, from the vocabulary's logits.
    restricted = heads.with_draft_vocab(params_, range(24))
    report = diagnostics.set_agreement(
        target, drafter, restricted, prompts, max_new_tokens=12, steps=2, gamma=3
    )
    assert report["rows_checked"] == 16 and 0 < report["alpha_1 drafting"] < 1
    assert report["alpha_1 drafting"] == report["step 1 at draft starts"]

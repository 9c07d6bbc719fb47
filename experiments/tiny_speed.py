"""Tiny random models on this machine: autoregressive vs speculative ms/token, draft == target.

    python -m experiments.tiny_speed [--gamma=4] [--max_new_tokens=128]

With the draft equal to the target every draft token is accepted, so the acceptance tau must
be gamma + 1 (tau, tokens emitted per call, is a little lower: the budget cuts the last call):
a mechanism check of the loop (the speculative run costs gamma + 1 draft-size forward passes
per target call, so it is not a speed demonstration).
"""

from __future__ import annotations

from absl import flags

from specjax import console
from specjax.bench import speedup
from specjax.models import ModelConfig, init_model

FLAGS = flags.FLAGS
flags.DEFINE_integer("gamma", 4, "draft tokens per target call")
flags.DEFINE_integer("max_new_tokens", 128, "tokens per row")
flags.DEFINE_integer("repeats", 5, "timed repeats after the compile call")


def main(argv):
    del argv
    config = ModelConfig(vocab_size=256, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                         head_dim=16, ffn_dim=128)  # fmt: skip
    target = init_model(config, seed=0)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8]]
    common = dict(max_new_tokens=FLAGS.max_new_tokens, repeats=FLAGS.repeats)
    ar = speedup.time_generate("autoregressive", target, None, prompts, gamma=1, **common)
    spec = speedup.time_generate("draft=target", target, target, prompts, gamma=FLAGS.gamma,
                               **common)  # fmt: skip
    assert spec.token_lists == ar.token_lists
    rows = [ar.row(), spec.row()]
    print(speedup.device_description(), speedup.now())
    columns = ["name", "gamma", "ms_per_token", "tau", "acceptance_tau", "compile_s"]
    print(speedup.markdown_table(rows, columns))


if __name__ == "__main__":
    console.run(main)

"""Turn a sweep (or run) folder into a markdown report and plots, for docs/benchmarks.md.

    python -m experiments.report --workdir=runs/qwen_sweep [--out=runs/qwen_sweep/report.md]

Reads only the files a sweep wrote (complete points only), so it can run while a sweep is
still going, or on results copied from another machine. Logic: specjax/eval/experiment.py.
"""

from absl import app, flags

from specjax import console, experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep or run folder.")
_OUT = flags.DEFINE_string("out", None, "Markdown file to write (default <workdir>/report.md).")
_TITLE = flags.DEFINE_string("title", None, "Section title (default: the pair's label).")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(experiment.write_report(_WORKDIR.value, _OUT.value, title=_TITLE.value))


if __name__ == "__main__":
    console.run(main)

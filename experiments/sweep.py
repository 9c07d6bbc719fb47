"""Run every point of a config's sweep, one subfolder each; rerunning resumes.

    python -m experiments.sweep --config=configs/qwen_coder.py --workdir=runs/qwen_sweep
    python -m experiments.sweep --config=configs/qwen_coder.py:max_new_tokens=64 \
        --points='gamma=2;gamma=4' --workdir=runs/qwen_two_points

Points come from the config file's get_sweep(arg), or from --points (';' between points,
',' between the keys of one point). --config.* flags change every point. Finished points
(same config, complete results) are skipped, so an interrupted sweep continues where it
stopped. Ends with report.md and plots/ in --workdir (logic in specjax/eval/experiment.py).
"""

import importlib.util
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from specjax import console, experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the sweep.")
_POINTS = flags.DEFINE_string("points", None, "Override get_sweep: 'k=v,k=v;k=v;...'.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show tqdm progress bars.")
flags.mark_flags_as_required(["config", "workdir"])


def sweep_points(config_flag: str, points: str | None) -> list[dict]:
    """--points if given, else get_sweep(arg) of the config file."""
    if points is not None:
        parsed = experiment.parse_points(points)
        if not parsed:
            raise app.UsageError(
                f"--points={points!r} lists no point: give 'k=v,k=v;k=v;...', or leave "
                "--points out to run the config file's get_sweep"
            )
        return parsed
    path, _, arg = config_flag.partition(":")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise app.UsageError(f"{path} has no get_sweep(arg); pass --points")
    return list(module.get_sweep(arg or None))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The flag's text, "path[:arg]": get_sweep receives the same arg as get_config.
    points = sweep_points(config_flags.get_config_filename(flags.FLAGS["config"]), _POINTS.value)
    # Every point is validated before the first one runs.
    result = experiment.run_sweep(
        _CONFIG.value,
        points,
        _WORKDIR.value,
        progress=_PROGRESS.value,
        command=shlex.join(["python", "-m", "experiments.sweep", *sys.argv[1:]]),
    )
    print((result.workdir / "report.md").read_text())
    print(f"computed {len(result.computed)} of {len(result.runs)} points; wrote {result.workdir}")


if __name__ == "__main__":
    console.run(main)

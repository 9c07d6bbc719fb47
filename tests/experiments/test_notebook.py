"""notebooks/quickstart.ipynb runs top to bottom (tiny random pair), so it cannot rot.

Parameters reach the notebook through the SPECJAX_NOTEBOOK environment variable, which its
parameter cell reads; the kernel inherits this process's environment (CPU, fake devices).
Needs nbformat, nbclient and ipykernel (skipped without them).
"""

from __future__ import annotations

import json

import pytest
from support import notebook_text

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def test_quickstart_notebook(tmp_path, monkeypatch, repo_root, tiny_sweep, config_module):
    # The notebook's "tiny" pair with these settings IS configs/tiny.py and its sweep, so the
    # notebook's sweep cell finds every point done by the tiny_sweep fixture: it resumes
    # across processes and recomputes nothing (the kernel then compiles only the one
    # generation). The assertions below check that it did skip.
    sweep_dir, _ = tiny_sweep
    tiny = config_module("tiny").get_config()
    params = {
        "pair": "tiny",
        "gamma": tiny.gamma,
        "max_new_tokens": tiny.max_new_tokens,
        "sweep_gammas": [p["gamma"] for p in config_module("tiny").get_sweep()],
        "num_prompts": tiny.prompts.subset,
        "batch_size": tiny.batch_size,
        "repeats": tiny.repeats,
        "workdir": str(sweep_dir),
    }
    monkeypatch.setenv("SPECJAX_NOTEBOOK", json.dumps(params))
    nb = nbformat.read(repo_root / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on any failure

    text = "\n".join(notebook_text(c) for c in nb.cells if c.cell_type == "code")
    assert "PAIR=tiny GAMMA=3" in text
    assert "greedy speculative output == autoregressive output: True" in text
    assert "greedy replay agrees with the loop's record: True" in text
    assert "accepted draft" in text and "of 16 tokens accepted from the draft" in text
    assert "image/png" in json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "0 of 2 points computed" in text
    assert "| tiny random | 3 |" in text

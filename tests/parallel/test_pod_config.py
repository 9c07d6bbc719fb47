"""configs/pod_qwen_coder.py: parses, validates against the experiment schema, its sweep points
are valid, its meshes fit the Qwen2.5-1.5B shape, and it asks for TPU auto-detection."""

import importlib.util
from pathlib import Path

import pytest

from specjax import experiment
from specjax.models.config import QWEN25_05B, QWEN25_15B
from specjax.parallel import allowed_model_sizes, distributed

PATH = Path(__file__).resolve().parents[2] / "configs" / "pod_qwen_coder.py"


@pytest.fixture(scope="module")
def pod():
    spec = importlib.util.spec_from_file_location("pod_qwen_coder", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pod_config(pod):
    config = pod.get_config()
    assert config.is_locked and experiment.validate(config)
    assert (config.mesh.data, config.mesh.model, config.batch_size) == (16, 1, 128)
    config = pod.get_config("slice=v4-32,tp=4,rows=4,gamma=6")
    assert (config.mesh.data, config.mesh.model, config.batch_size, config.gamma) == (4, 4, 16, 6)
    for name, chips in pod.SLICE_CHIPS.items():
        for point in pod.get_sweep(f"slice={name}"):
            checked = experiment.finalize(pod.get_config(f"slice={name}"), point)
            assert checked.mesh.data * checked.mesh.model == chips
            assert checked.mesh.model in allowed_model_sizes(QWEN25_15B, chips)
            assert checked.batch_size % checked.mesh.data == 0
    # The draft is replicated by default; split it would need 14 heads to divide tp.
    assert allowed_model_sizes(QWEN25_05B, 16) == [1, 2]
    with pytest.raises(experiment.ConfigError, match="tp=3"):
        pod.get_config("tp=3")
    with pytest.raises(experiment.ConfigError, match="slice='v9-8' unknown"):
        pod.get_config("slice=v9-8")
    settings = distributed.resolve(pod.get_distributed(), environ={})
    assert settings.auto and settings.multi_process

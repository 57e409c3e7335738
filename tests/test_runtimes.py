"""Compiled runtimes against PyTorch on a tiny timm model: export parity, runtime choice, the config
errors a user sees (fast, no Ray)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.config import ConfigError, ModelConfig, ServeConfig
from pneumo.evaluation.prediction import predict_probabilities
from pneumo.models.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from pneumo.models.networks import create_model, resolve_preprocessing
from pneumo.models.runtimes import (
    INT8_FILE,
    ONNX_FILE,
    RUNTIMES,
    choose_runtime,
    create_predictor,
    export_onnx,
    onnx_path,
    require_runtime,
)
from pneumo.monitoring.features import observe

IMAGE_SIZE = 32
TOLERANCE = {"torch": 0.0, "onnxruntime": 1e-5, "openvino": 1e-5}  # |P| difference; every runtime computes fp32


@pytest.fixture(scope="module", params=[None, "max"], ids=["model's pooling", "global_pool max"])
def checkpoint(tmp_path_factory, request):
    torch.manual_seed(0)
    cfg = ModelConfig(name="test_resnet", in_chans=1, global_pool=request.param)
    model = create_model(cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=IMAGE_SIZE)
    meta = CheckpointMeta(model=cfg.__dict__, preprocessing=spec.to_dict(), temperature=1.7, logit_bias=-0.4)
    folder = save_checkpoint(tmp_path_factory.mktemp("runtimes") / "checkpoint", model, meta)
    loaded = load_checkpoint(folder)
    export_onnx(loaded, folder)
    return loaded


def films(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_gives_pytorchs_probabilities_at_any_batch_size(checkpoint, runtime):
    predictor = create_predictor(checkpoint, runtime)
    calibration = checkpoint.meta.calibration
    for n in (1, 5):
        images = films(n, seed=n)
        expected = predict_probabilities(checkpoint, torch.from_numpy(images))
        got = calibration.probabilities(predictor.logits(images))
        assert got.shape == (n,)
        assert np.abs(got - expected).max() <= TOLERANCE[runtime]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_gives_the_monitoring_features_of_the_same_pass(checkpoint, runtime):
    """The serving gate reads the features of the pass that scored the film: they must be the features
    the model's reference profile was fitted on (monitoring.features.observe, PyTorch)."""
    images = films(4, seed=7)
    expected = observe(checkpoint, torch.from_numpy(images))
    outputs = create_predictor(checkpoint, runtime).infer(images)
    assert outputs.features.shape == expected.features.shape
    assert np.abs(outputs.features - expected.features).max() <= 1e-4 * max(1.0, np.abs(expected.features).max())
    assert np.array_equal(outputs.logits, create_predictor(checkpoint, runtime).logits(images))


def test_the_export_sits_in_the_checkpoint_folder_and_takes_uint8_films(checkpoint):
    import onnx

    graph = onnx.load(str(checkpoint.directory / ONNX_FILE)).graph
    films_input = graph.input[0]
    assert films_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert films_input.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis


def test_auto_picks_an_installed_runtime_and_it_predicts(checkpoint):
    predictor = choose_runtime("auto", checkpoint, threads=1, max_batch_size=4)
    assert predictor.runtime in RUNTIMES
    assert predictor.logits(films(3)).shape == (3,)


def test_a_checkpoint_without_export_is_exported_at_load(checkpoint, tmp_path):
    folder = save_checkpoint(tmp_path / "old", checkpoint.model, checkpoint.meta)
    assert not (folder / ONNX_FILE).exists()
    assert onnx_path(load_checkpoint(folder)) == folder / ONNX_FILE
    assert (folder / ONNX_FILE).is_file()


def test_bad_runtime_settings_are_config_errors_that_say_what_to_do(checkpoint):
    with pytest.raises(ConfigError, match="serve.runtime='tensorrt' is not one of"):
        ServeConfig(runtime="tensorrt")
    with pytest.raises(ConfigError, match="no model.int8.onnx"):
        create_predictor(checkpoint, "onnxruntime", int8=True)
    with pytest.raises(ConfigError, match="needs an ONNX runtime"):
        create_predictor(checkpoint, "torch", int8=True)
    assert INT8_FILE not in {p.name for p in checkpoint.directory.iterdir()}


def test_a_runtime_that_is_not_installed_names_its_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",  # an environment without openvino, simulated at import lookup
        lambda name, *args: None if name == "openvino" else real_find_spec(name, *args),
    )
    with pytest.raises(
        ConfigError,
        match=r"serve.runtime=openvino: the 'openvino' package is not installed "
        r"\(pip install openvino\)",
    ):
        require_runtime("openvino")


def test_int8_quantization_writes_a_model_every_onnx_runtime_serves(checkpoint, tmp_path):
    import shutil

    from pneumo.registry.export import quantize_int8

    folder = Path(shutil.copytree(checkpoint.directory, tmp_path / "checkpoint"))
    assert quantize_int8(folder, iter([films(8, seed=1), films(8, seed=2)])) == folder / INT8_FILE
    loaded = load_checkpoint(folder)
    images = films(6, seed=3)
    fp32 = create_predictor(loaded, "onnxruntime").logits(images)
    for runtime in ("onnxruntime", "openvino"):
        int8 = create_predictor(loaded, runtime, int8=True)
        assert int8.precision == "int8"
        logits = int8.logits(images)
        assert logits.shape == (6,) and np.isfinite(logits).all()
        assert np.corrcoef(logits, fp32)[0, 1] > 0.9  # quantized, not broken

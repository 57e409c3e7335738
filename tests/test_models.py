"""Model creation: offline weights from local files, errors, and the model's own data settings."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from pneumo.config import ConfigError, ModelConfig
from pneumo.models.checkpoints import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from pneumo.models.networks import create_model, resolve_preprocessing


def imagenet_like_weights(name: str) -> dict:
    """A 1000-class, 3-channel state dict, like a file downloaded from the hub for offline use."""
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=1000, in_chans=3).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_offline_weights_file_loads_and_adapts(tmp_path, suffix):
    source = imagenet_like_weights("test_resnet")
    path = tmp_path / f"weights{suffix}"
    save_file(source, path) if suffix == ".safetensors" else torch.save(source, path)
    model = create_model(ModelConfig(name="test_resnet", weights_path=str(path), in_chans=1))
    loaded = model.state_dict()
    inner = "layer1.0.conv1.weight"
    assert torch.equal(loaded[inner], source[inner]), "backbone weights come from the file"
    stem = "conv1.0.weight"
    assert loaded[stem].shape[1] == 1 and torch.allclose(loaded[stem][:, 0], source[stem].sum(1), atol=1e-5)
    assert loaded["fc.weight"].shape[0] == 1, "the ImageNet classifier is replaced by one logit"


def test_random_init_differs_from_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(imagenet_like_weights("test_resnet"), path)
    torch.manual_seed(1)
    random = create_model(ModelConfig(name="test_resnet")).state_dict()["layer1.0.conv1.weight"]
    from_file = create_model(ModelConfig(name="test_resnet", weights_path=str(path))).state_dict()[
        "layer1.0.conv1.weight"
    ]
    assert not torch.equal(random, from_file)


def test_bad_model_name_and_missing_file_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.name='resnet1800'"):
        create_model(ModelConfig(name="resnet1800"))
    with pytest.raises(ConfigError, match="model.weights_path"):
        create_model(ModelConfig(name="test_resnet", weights_path=str(tmp_path / "missing.safetensors")))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "resnet18"])
def test_preprocessing_comes_from_the_model(name):
    model = create_model(ModelConfig(name=name))
    expected = timm.data.resolve_model_data_config(model)
    gray = resolve_preprocessing(model, in_chans=1)
    assert gray.image_size == expected["input_size"][-1]
    assert gray.mean == pytest.approx((sum(expected["mean"]) / 3,))
    assert resolve_preprocessing(model, in_chans=3).std == pytest.approx(tuple(expected["std"]))
    assert resolve_preprocessing(model, 1, image_size=48).image_size == 48


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_forward_backward_gives_one_logit(name):
    model = create_model(ModelConfig(name=name))
    size = resolve_preprocessing(model, 1).image_size
    out = model(torch.randn(2, 1, size, size))
    out.sum().backward()
    assert out.shape == (2, 1)


def test_global_pool_max_scores_the_strongest_cell_and_survives_a_checkpoint(tmp_path):
    """model.global_pool reaches timm: a max-pooled head reads each channel's strongest cell, and the
    checkpoint rebuilds the same head (its config travels in pneumo.json)."""
    cfg = ModelConfig(name="test_resnet", global_pool="max")
    model = create_model(cfg).eval()
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    assert torch.equal(model.forward_head(features, pre_logits=True), features.amax(dim=(2, 3)))
    meta = CheckpointMeta(model=cfg.__dict__, preprocessing=resolve_preprocessing(model, 1, 32).to_dict())
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, meta))
    assert torch.equal(loaded.model(x), model(x))
    with pytest.raises(ConfigError, match="model.global_pool='median': test_resnet refuses it"):
        create_model(ModelConfig(name="test_resnet", global_pool="median"))


def test_checkpoint_round_trip_without_pickle(tmp_path):
    model = create_model(ModelConfig(name="test_resnet")).eval()
    spec = resolve_preprocessing(model, 1, 32)
    meta = CheckpointMeta(
        model={"name": "test_resnet", "in_chans": 1, "drop_rate": 0.0, "pretrained": False, "weights_path": None},
        preprocessing=spec.to_dict(),
        decision_threshold=0.3,
    )
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(loaded.model(x), model(x))
    assert loaded.meta.preprocessing_spec == spec and loaded.meta.decision_threshold == 0.3
    with pytest.raises(CheckpointError, match="pneumo.json"):
        load_checkpoint(tmp_path)

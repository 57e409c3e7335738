"""The maps (Grad-CAM x input gradient): the target layer found from each CNN family, maps of the
right shape and range, the localization math on hand-made cases, and the Adebayo et al. sanity check
on a tiny trained model."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.densenet import DenseNet
from timm.models.vgg import VGG

from pneumo.data.batch_transforms import normalize
from pneumo.data.synthetic import (
    generate_chest_xrays,
    opacity_mask_path,
    plan_dataset,
    render_chest_xray_and_opacity,
)
from pneumo.data.transforms import decode_image
from pneumo.evaluation.explain import (
    Explainer,
    ExplanationError,
    find_target_layer,
    heatmap_png,
    overlay_png,
)
from pneumo.evaluation.localization import (
    mass_inside,
    peak_inside,
    perfect_map_pointing_game,
    randomized_copy,
    rank_correlations,
    read_opacity_mask,
    score_localization,
)
from pneumo.models.checkpoints import CheckpointMeta, LoadedModel
from pneumo.models.networks import resolve_preprocessing

SIZE = 48


def tiny(name: str) -> torch.nn.Module:
    """One small member of each family pneumo trains, single channel, one logit."""
    if name == "densenet":
        return DenseNet(growth_rate=8, block_config=(1, 1, 1, 1), num_classes=1, in_chans=1)
    if name == "vgg":
        return VGG([8, "M", 16, "M", 16, "M", 32, "M", 32, "M"], num_classes=1, in_chans=1, mlp_ratio=0.25)
    return timm.create_model(name, num_classes=1, in_chans=1)


@pytest.mark.parametrize(
    "name, size, layer",
    [
        ("test_resnet", 224, "layer4"),  # the last stage when its map is large enough (7x7)
        ("test_resnet", 128, "layer3"),  # layer4 would be 4x4: the deepest map >= 6 cells a side is 8x8
        ("test_resnet", 48, "layer2"),  # layer4 2x2, layer3 3x3, layer2 6x6
        ("test_efficientnet", 224, "bn2"),  # the module that makes the final features, after the last stage
        ("test_convnext", 64, "stages.1"),
        ("densenet", 224, "features"),
        ("densenet", 64, "features.denseblock2"),
        ("vgg", 224, "features"),
    ],
)
def test_target_layer_is_found_from_the_model(name, size, layer):
    model = tiny(name)
    assert find_target_layer(model, 1, size) == layer
    shapes = []
    model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: shapes.append(out.shape) and None)
    model(torch.zeros(1, 1, size, size))
    assert len(shapes[0]) == 4 and min(shapes[0][2:]) > 1
    assert Explainer(loaded(model, size)).map_size == tuple(shapes[0][2:])


def test_models_without_a_spatial_map_are_refused():
    with pytest.raises(ExplanationError, match="not a spatial .N, C, H, W. map"):
        find_target_layer(tiny("test_vit"), 1, 64)


def loaded(model: torch.nn.Module, size: int = SIZE) -> LoadedModel:
    spec = resolve_preprocessing(model, 1, size)
    return LoadedModel(model.eval(), CheckpointMeta(model={"name": "test"}, preprocessing=spec.to_dict()))


@pytest.fixture(scope="module")
def films() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic films at SIZE px (uint8 (N, 1, H, W)), their true labels and opacity masks."""
    plan = plan_dataset(80, seed=5)
    rendered = [render_chest_xray_and_opacity(image, 5, SIZE) for image in plan]
    images = np.stack([film[None] for film, _ in rendered])
    masks = np.stack([mask if mask is not None else np.zeros((SIZE, SIZE), bool) for _, mask in rendered])
    return images, np.array([image.true_label == "PNEUMONIA" for image in plan]), masks


@pytest.fixture(scope="module")
def trained(films) -> LoadedModel:
    """test_resnet fitted for a few full-batch steps: enough to make its maps depend on its weights."""
    images, labels, _ = films
    torch.manual_seed(0)
    model = loaded(tiny("test_resnet"))
    inputs, targets = normalize(torch.from_numpy(images), model.meta.preprocessing_spec), torch.tensor(labels).float()
    optimizer = torch.optim.Adam(model.model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 6x faster than 2 threads on a busy 2-core machine
    model.model.train()
    for _ in range(20):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.model(inputs).squeeze(1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.model.eval()
    return model


def test_maps_have_the_input_size_and_lie_in_0_1(trained, films):
    images = torch.from_numpy(films[0][:6])
    maps = Explainer(trained).explain(images)
    assert maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, pytest.approx(1.0)) for m in maps)  # each scaled to its own peak
    assert np.allclose(Explainer(trained).explain(images[:1])[0], maps[0], atol=1e-5)  # batch-independent


def test_one_pass_maps_equal_captums_grad_cam_and_saliency(trained, films):
    """The maps' two parts come from one backward pass; Captum (the maintained reference) computes each
    with its own passes and must agree."""
    from captum.attr import LayerGradCam, Saliency

    explainer = Explainer(trained)
    inputs = normalize(torch.from_numpy(films[0][:8]), trained.meta.preprocessing_spec).float()
    with torch.enable_grad():
        coarse, fine = explainer._gradcam_and_gradient(inputs)
        layer = explainer.model.get_submodule(explainer.target_layer)
        expected_coarse = LayerGradCam(explainer.model, layer).attribute(inputs, target=0, relu_attributions=True)
        saliency = Saliency(explainer.model).attribute(inputs.clone().requires_grad_(True), target=0, abs=False)
    expected_fine = saliency.sum(dim=1)
    assert coarse.abs().max() > 0 and fine.abs().max() > 0
    torch.testing.assert_close(coarse, expected_coarse.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fine, expected_fine.detach(), rtol=1e-4, atol=1e-6)


def test_explaining_leaves_the_served_model_untouched(trained, films):
    images = normalize(torch.from_numpy(films[0][:4]), trained.meta.preprocessing_spec)
    with torch.no_grad():
        before = trained.model(images)
    explainer = Explainer(trained)
    explainer.explain(torch.from_numpy(films[0][:4]))
    assert explainer.model is not trained.model
    assert not any(module._forward_hooks for module in trained.model.modules())
    with torch.no_grad():
        assert torch.equal(trained.model(images), before)


def test_pngs_decode_to_the_map_and_an_upscaled_overlay(trained, films):
    cam = Explainer(trained).explain(torch.from_numpy(films[0][:1]))[0]
    import io

    heat = Image.open(io.BytesIO(heatmap_png(cam)))
    assert heat.mode == "RGBA" and heat.size == (SIZE, SIZE)
    assert np.asarray(heat)[..., 3].max() == 255 if cam.max() == 1 else True
    overlay = Image.open(io.BytesIO(overlay_png(films[0][0, 0], cam)))
    assert overlay.mode == "RGB" and overlay.width >= 320


def test_pointing_game_and_mass_on_hand_made_maps():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True  # the opacity covers a quarter of each film
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 1] = 1.0  # peak inside, all mass inside
    maps[1, 3, 3], maps[1, 0, 0] = 1.0, 0.5  # peak outside, a third of the mass inside
    # maps[2] is all zeros: no evidence, so no peak and no mass
    assert peak_inside(maps, masks).tolist() == [True, False, False]
    assert mass_inside(maps, masks) == pytest.approx([1.0, 1 / 3, 0.0])
    assert rank_correlations(maps[:1], maps[:1]) == pytest.approx([1.0])
    assert rank_correlations(maps[:1], maps[2:]) == pytest.approx([0.0])  # a constant map


def test_a_perfect_map_at_a_coarse_resolution_misses_small_opacities():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 6:9, 6:9] = True  # a small patch across the centre: a 2x2 map peaks in a corner cell, outside it
    masks[1, :8, :8] = True  # one whole quadrant: any map finds it
    assert perfect_map_pointing_game(masks, (2, 2)) == pytest.approx(0.5)
    assert perfect_map_pointing_game(masks, (16, 16)) == pytest.approx(1.0)  # the masks themselves


def test_films_and_masks_line_up_as_the_model_sees_them(tmp_path):
    """The mask read for a film lies where the generator drew the opacity on the film the model gets: the
    same plain resize on both, no crop, letterbox or flip on one side only."""
    generate_chest_xrays(tmp_path, 24, 64, seed=3, label_noise=0.0, split_fractions=(1.0, 0.0, 0.0))
    spec = resolve_preprocessing(tiny("test_resnet"), 1, 32)
    checked = 0
    for image in plan_dataset(24, 3, (1.0, 0.0, 0.0), label_noise=0.0):
        mask = read_opacity_mask(tmp_path, tmp_path / image.relative_path, 32)
        if image.true_label == "NORMAL":
            assert mask is None
            continue
        film = decode_image((tmp_path / image.relative_path).read_bytes(), spec)[0].astype(np.float32)
        drawn, drawn_mask = render_chest_xray_and_opacity(image, 3, 64)
        resized = Image.fromarray(drawn).resize((32, 32), Image.Resampling[spec.interpolation.upper()])
        assert np.abs(film - np.asarray(resized, np.float32)).mean() < 3  # the same film (JPEG aside)
        expected = np.asarray(Image.fromarray(drawn_mask.astype(np.uint8) * 255).resize((32, 32), Image.BILINEAR))
        assert np.array_equal(mask, expected >= 128)
        checked += 1
    assert checked >= 10


def test_masks_are_read_at_the_model_size(tmp_path):
    image = plan_dataset(80, seed=2)[0]
    mask = np.zeros((128, 128), np.uint8)
    mask[32:64, 64:128] = 255
    path = opacity_mask_path(tmp_path, image.relative_path)
    path.parent.mkdir(parents=True)
    Image.fromarray(mask).save(path)
    read = read_opacity_mask(tmp_path, tmp_path / image.relative_path, 32)
    assert read.shape == (32, 32) and read.mean() == pytest.approx(0.125)
    assert read_opacity_mask(tmp_path, tmp_path / "test" / "NORMAL" / "other.jpeg", 32) is None


def test_randomized_weights_change_the_maps(trained, films):
    """Adebayo et al. (2018): explanations must depend on the learned weights. The trained model's maps
    agree with themselves exactly and with a re-drawn model's maps far less."""
    images, labels, masks = films
    pneumonia = labels & masks.any(axis=(1, 2))
    scored = score_localization(trained, images[pneumonia][:24], masks[pneumonia][:24])
    assert scored.randomized_rank_correlation < 0.5
    again = rank_correlations(*(Explainer(trained).explain(torch.from_numpy(images[:4])) for _ in range(2)))
    assert again == pytest.approx(np.ones(4))
    assert randomized_copy(trained).model is not trained.model
    assert 0 <= scored.pointing_game <= 1 and 0 < scored.area_fraction < 0.5
    low, high = scored.pointing_game_ci  # Wilson's interval: around the share, inside [0, 1], ~+-0.2 on 24 films
    assert 0 <= low <= scored.pointing_game <= high <= 1 and 0.1 < high - low < 0.45

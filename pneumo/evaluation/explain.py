"""Where the model looked: Grad-CAM x gradient maps for the timm CNNs pneumo trains.

    explainer = Explainer(loaded)                      # finds the target layer from the model itself
    maps = explainer.explain(images)                   # uint8 (N, C, H, W) -> float (N, H, W) in [0, 1]
    png = overlay_png(images[0, 0].numpy(), maps[0])   # the film with the map over it

A map is the product of two attributions of the PNEUMONIA logit:
- Grad-CAM (Selvaraju et al. 2017) at a convolutional layer: its channels weighed by the logit's
  gradient averaged over the map, positive part kept. It says *where*, but only at the layer's cells
  (8x8 at the quickstart's 64 px, 8 px apart);
- the input gradient, positive part: which pixels, brightened, raise P(pneumonia), at the film's
  full resolution.
Their product is Guided Grad-CAM's fusion (same paper) with the plain gradient in place of guided
backpropagation, whose maps barely depend on the weights (Adebayo et al. 2018). How often the
product points into a drawn opacity, and whether randomized weights change it, is measured by
pneumo.evaluation.localization (figures: docs/explanation/maps.md). Both parts show evidence
*for* pneumonia: a confident NORMAL film can have an empty map.

Both come from one forward and one backward pass (`torch.autograd.grad` to the layer's output and to
the input): Captum's LayerGradCam and Saliency give the same maps (tests/test_explain.py pins that),
but each runs its own passes, which made a map 1.6-1.9x slower.

The target layer is found from the model, with forward hooks over `forward_features` (so before
global pooling): among the ends of timm's feature stages (`feature_info`) and the module that makes
the final features, the deepest whose output is a spatial (N, C, H, W) map at least MIN_MAP_SIDE
cells a side (else the deepest map). No per-name tables: resnet, densenet, efficientnet, vgg and
convnext all work. At 224 px that is the last stage (7x7 for a ResNet); at 64 px a ResNet's last
stages are 2x2 and 4x4, and a 4x4 map peaks at one of 16 cell centres 16 px apart, which misses
small opacities even when it is perfect, so the 8x8 stage before them is taken. Models whose
features are tokens (ViT) or channels-last (Swin) have no such map and are refused with
ExplanationError.

Used by `pneumo eval` (report overlays, localization on synthetic sets) and by the Serve app's /explain.
"""

from __future__ import annotations

import copy
import io
import threading

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from pneumo.data.batch_transforms import normalize
from pneumo.models.checkpoints import LoadedModel

METHOD = "grad-cam x gradient"  # what the maps are, as answers name it
EXPLAINED_CLASS = "PNEUMONIA"  # the logit whose evidence the maps show
# Smallest feature-map side (cells) taken as the target layer when a larger map exists. A perfect map
# (each opacity averaged over the cells) points inside the synthetic set's opacities on 0.52 of the
# films at 4x4 and on 0.93 at 6x6; 6 keeps a ResNet's 7x7 last stage at 224 px.
MIN_MAP_SIDE = 6
COLORMAP = "inferno"  # perceptually ordered: brighter is more evidence
OVERLAY_ALPHA = 0.5  # heatmap opacity at full evidence in overlay images
OVERLAY_MIN_SIDE = 320  # overlay images are scaled up to at least this many pixels a side


class ExplanationError(ValueError):
    """A model these maps cannot explain (no spatial feature map); the message says why."""


def _feature_outputs(
    model: torch.nn.Module, sample: torch.Tensor
) -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """(module name, output shape) of every module that ran in forward_features, in the order each
    finished, and the features themselves."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: finished.append((name, tuple(out.shape))) if torch.is_tensor(out) else None
        )
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            features = model.forward_features(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return finished, features


def find_target_layer(model: torch.nn.Module, in_chans: int, image_size: int) -> str:
    """Name of the module Grad-CAM should use: see the module docstring for the rule.

    >>> find_target_layer(timm.create_model("resnet18", num_classes=1), 3, 224)
    'layer4'
    """
    return _target_layer_and_map_size(model, in_chans, image_size)[0]


def _target_layer_and_map_size(model: torch.nn.Module, in_chans: int, image_size: int) -> tuple[str, tuple[int, int]]:
    """The target layer and the (height, width) of its map at image_size."""
    if not hasattr(model, "forward_features"):
        raise ExplanationError(f"{type(model).__name__} has no forward_features: not a timm model")
    sample = torch.zeros(1, in_chans, image_size, image_size)
    finished, features = _feature_outputs(model.eval(), sample)
    name = type(model).__name__
    if features.ndim != 4 or features.shape[1] != getattr(model, "num_features", features.shape[1]):
        raise ExplanationError(
            f"{name}: its features have shape {tuple(features.shape)}, not a spatial (N, C, H, W) map (tokens of a "
            f"vision transformer, or channels-last); Grad-CAM explains CNNs (resnet, densenet, efficientnet, vgg, "
            f"convnext, ...)"
        )
    stage_ends = {info["module"] for info in getattr(model, "feature_info", [])}  # timm's feature stages
    last = [layer for layer, shape in finished if shape == tuple(features.shape)][-1:]  # makes the features
    candidates = [
        (layer, shape[2:])
        for layer, shape in finished
        if (layer in stage_ends or layer in last) and len(shape) == 4 and min(shape[2:]) > 1
    ]
    if not candidates:
        raise ExplanationError(f"{name} at {image_size} px has no feature map larger than 1x1 to explain")
    large = [candidate for candidate in candidates if min(candidate[1]) >= MIN_MAP_SIDE]
    return (large or candidates)[-1]


def to_input_size(raw: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Layer maps (N, 1, h, w) -> (N, H, W) at the input size (bilinear), each scaled to its own peak in
    [0, 1]; a map without positive values stays all zeros."""
    return scaled_to_peak(_upsampled(raw, size))


def _upsampled(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Layer maps (N, 1, h, w) -> (N, H, W), bilinear."""
    return F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def scaled_to_peak(maps: torch.Tensor) -> np.ndarray:
    """(N, H, W) maps, each divided by its own peak and clipped to [0, 1] (all zeros stay zeros)."""
    peaks = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (maps / peaks).clamp(0, 1).numpy()


class Explainer:
    """Grad-CAM x gradient maps of one loaded model, on a private copy of it: a hook on the target
    layer records its output while a map is made, and must not fire in forward passes that serve
    predictions in other threads. Calls are serialized for the same reason."""

    def __init__(self, loaded: LoadedModel):
        self.preprocessing = loaded.meta.preprocessing_spec
        self.model = copy.deepcopy(loaded.model).eval()
        spec = self.preprocessing
        self.target_layer, self.map_size = _target_layer_and_map_size(self.model, spec.in_chans, spec.image_size)
        self._layer = self.model.get_submodule(self.target_layer)
        self._lock = threading.Lock()

    def explain(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) images at the model's input size -> maps (N, H, W), each scaled to [0, 1]
        (all zeros where neither part holds positive evidence for pneumonia at the same place)."""
        inputs = normalize(images, self.preprocessing).float()
        with self._lock, torch.enable_grad():
            coarse, fine = self._gradcam_and_gradient(inputs)
        return scaled_to_peak(_upsampled(coarse, tuple(images.shape[-2:])) * fine.clamp_min(0))

    def _gradcam_and_gradient(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad-CAM at the target layer (N, 1, h, w), positive part, and the input gradient summed over
        channels (N, H, W), of the PNEUMONIA logit, for normalized inputs. Each film's logit depends on
        its own input only (eval mode), so one backward pass of their sum gives every film's gradients."""
        inputs = inputs.detach().requires_grad_(True)
        activations: list[torch.Tensor] = []
        hook = self._layer.register_forward_hook(lambda _module, _inputs, output: activations.append(output))
        try:
            logits = self.model(inputs)[:, 0]
        finally:
            hook.remove()
        layer_gradient, input_gradient = torch.autograd.grad(logits.sum(), (activations[-1], inputs))
        channel_weights = layer_gradient.mean(dim=(2, 3), keepdim=True)
        coarse = (channel_weights * activations[-1]).sum(dim=1, keepdim=True).clamp_min(0)
        return coarse.detach(), input_gradient.detach().sum(dim=1)


def heatmap_rgba(cam: np.ndarray) -> np.ndarray:
    """A map in [0, 1] -> uint8 RGBA: colour from COLORMAP, alpha rising with the evidence."""
    rgba = colormaps[COLORMAP](cam)
    rgba[..., 3] = np.sqrt(cam)  # faint evidence stays see-through
    return (rgba * 255 + 0.5).astype(np.uint8)


def heatmap_png(cam: np.ndarray) -> bytes:
    """The map as a transparent PNG at its own size (what a page lays over the film)."""
    return _png(Image.fromarray(heatmap_rgba(cam), "RGBA"))


def film_png(image: np.ndarray) -> bytes:
    """A uint8 (C, H, W) model input as a PNG (grayscale for one channel)."""
    return _png(Image.fromarray(image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))))


def overlay_image(film: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W) film and its map -> uint8 RGB (H, W, 3): the map blended over the film."""
    gray = np.repeat(film[..., None].astype(np.float32) / 255, 3, axis=2)
    colour = colormaps[COLORMAP](cam)[..., :3]
    weight = alpha * np.sqrt(cam)[..., None]
    return ((1 - weight) * gray * 255 + weight * colour * 255 + 0.5).astype(np.uint8)


def overlay_png(film: np.ndarray, cam: np.ndarray) -> bytes:
    """The overlay as a PNG, scaled up to OVERLAY_MIN_SIDE so a 64 px model input stays readable."""
    image = Image.fromarray(overlay_image(film, cam), "RGB")
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(image.size)))
    return _png(image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

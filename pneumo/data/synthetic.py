"""Synthetic chest radiographs in the Kaggle "Chest X-Ray Images (Pneumonia)" layout.

For tests, demos and offline clusters: ``generate_chest_xrays(out_dir)`` writes
``out_dir/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with the real set's file names, so every
loader, split and training path runs unchanged on it. ``plan_dataset`` lists what would be written
(split, folder label, true label, patient, file name) without drawing pixels, and
``render_chest_xray`` draws one planned film.

What it models
--------------
* Patients, not images: 1-4 films per patient, all in one split and of one true class; about
  3 pneumonia : 1 normal (the real set is ~74 % pneumonia). Splits are drawn per patient and per
  class, and val and test always get a few patients of each class.
* A PA chest film: dark air around a body silhouette, two elliptical lung fields (dark, narrow at
  the apex, dome-shaped base), bright mediastinum and spine, a heart shadow biased to the
  patient's left (viewer's right), posterior ribs as curved bands over the lungs, clavicles, and
  faint vascular markings that fan out from the hila.
* Anatomy (lung size and position, heart, ribs, body width) is fixed per patient; each film varies
  in exposure, contrast, gamma, rotation, shift, depth of inspiration, noise and blur.
* Pneumonia adds patchy (bronchopneumonia) or lobar (consolidation) opacities inside one or both
  lung fields: brighter, blurred, of varying size and contrast. Some are small and faint, so the
  task is learnable but not trivial (a small CNN trained from scratch at 64 px on ~1000 images for
  5 epochs reaches a test AUROC of about 0.89-0.95).
* ``label_noise``: that fraction of images, chosen by the seed, sit in the folder of the other
  class (an annotation error). The pixels and the file name still follow the true class and
  patient, so the best achievable folder-label accuracy is about ``1 - label_noise``.

Same arguments give byte-identical files: planning uses one generator seeded with ``seed``, each
patient's anatomy and each film are drawn from generators derived from ``(seed, patient)`` and
``(seed, image index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from pneumo.config import SynthConfig
from pneumo.data.folder import CLASS_NAMES, SPLITS

SYNTHETIC_MARKER = "SYNTHETIC.md"  # provenance note at the dataset root
OPACITY_MASKS_DIR = "opacity_masks"  # root/opacity_masks/<split>/<label>/<stem>.png: where each opacity was drawn
OPACITY_MASK_FRACTION = 0.25  # an opacity pixel adds at least this share of the opacity's peak density

PNEUMONIA_SHARE = 0.74  # share of images whose true class is PNEUMONIA
MEAN_IMAGES_PER_PATIENT = 2.5  # each patient has 1 to 4 films
MIN_HELD_OUT_PATIENTS = 2  # per class, in val and in test (when their fraction is > 0)
JPEG_QUALITY = 90
_PATIENT_STREAM, _IMAGE_STREAM, _ACQUISITION_STREAM = 0, 1, 2  # keeps patient, image and scanner draws apart


@dataclass(frozen=True)
class Acquisition:
    """How another hospital's films differ from the default set (all defaults: no difference, same bytes).

    For monitoring tests and benchmarks: each field imitates one way a scanner, protocol or population
    changes under a deployed model (`pneumo data synth --exposure -0.2 --portable …`).
    """

    exposure: float = 0.0  # added to brightness on the 0..1 film scale (-: under-exposed, +: over-exposed)
    noise: float = 0.0  # extra quantum noise, standard deviation on the 0..1 film scale
    blur_px: float = 0.0  # extra detector blur, Gaussian sigma in px of a 128 px film
    resolution: float = 1.0  # detector resolution as a fraction of image_size (0.25: a quarter, upsampled)
    portable: bool = False  # AP portable look: magnified heart, shallow inspiration, tilt, collimated edges
    inverted: bool = False  # polarity inverted (a MONOCHROME1 film shown without its inversion)

    @property
    def is_default(self) -> bool:
        return self == Acquisition()


@dataclass(frozen=True)
class PlannedImage:
    """One film of the plan: where it goes, what it shows, and under which name."""

    index: int  # position in the plan; seeds the film's generator
    patient_index: int  # position of the patient in the plan; seeds the anatomy
    patient_id: str
    split: str
    true_label: str  # what the pixels show
    label: str  # the folder it is written to (differs from true_label for noisy labels)
    filename: str

    @property
    def relative_path(self) -> Path:
        return Path(self.split, self.label, self.filename)


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_chest_xrays`` wrote."""

    root: Path
    counts: dict[str, dict[str, int]]  # split -> folder label -> number of images
    n_patients: int
    label_noise: float


@dataclass(frozen=True)
class _Patient:
    true_label: str
    n_images: int
    split: str = ""


# ---------------------------------------------------------------- planning


def is_synthetic_set(path: str | Path) -> bool:
    """Whether a Kaggle-layout folder was written by this module (its SYNTHETIC_MARKER says so)."""
    return (Path(path) / SYNTHETIC_MARKER).is_file()


def _draw_patients(rng: np.random.Generator, n_images: int, pneumonia_share: float) -> list[_Patient]:
    """Patients of both classes holding exactly n_images films, in random order."""
    n_pneumonia = round(pneumonia_share * n_images)
    patients = []
    for label, n_class in zip(CLASS_NAMES, (n_images - n_pneumonia, n_pneumonia)):
        n_patients = math.ceil(n_class / MEAN_IMAGES_PER_PATIENT)
        extra_slots = np.repeat(np.arange(n_patients), 3)  # up to 3 films beyond the first
        chosen = rng.choice(extra_slots, size=n_class - n_patients, replace=False)
        counts = 1 + np.bincount(chosen, minlength=n_patients)
        patients += [_Patient(label, int(n)) for n in counts]
    order = rng.permutation(len(patients))
    return [patients[i] for i in order]


def _held_out_count(n_patients: int, fraction: float) -> int:
    """Patients of one class for val or test: the fraction, but at least a few when it is > 0."""
    return max(MIN_HELD_OUT_PATIENTS, round(fraction * n_patients)) if fraction > 0 else 0


def _assign_splits(
    rng: np.random.Generator, patients: list[_Patient], fractions: tuple[float, float, float]
) -> list[_Patient]:
    """Patients with a split, drawn per class so each split keeps the class balance."""
    splits = [""] * len(patients)
    for label in CLASS_NAMES:
        members = [i for i, p in enumerate(patients) if p.true_label == label]
        n_val, n_test = (_held_out_count(len(members), f) for f in fractions[1:])
        if len(members) - n_val - n_test < 1:
            raise ValueError(f"too few {label} patients ({len(members)}) for train, val and test: raise n_images")
        shuffled = rng.permutation(members)
        for rank, i in enumerate(shuffled):
            splits[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return [replace(patient, split=split) for patient, split in zip(patients, splits)]


def _file_names(patients: list[_Patient], rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """(patient id, film names) per patient, following the Kaggle naming of each class."""
    n_normal = n_person = image_counter = 0
    named = []
    for patient in patients:
        if patient.true_label == "NORMAL":
            n_normal += 1
            pid = f"IM-{n_normal:04d}"
            names = [f"{pid}-{k:04d}.jpeg" for k in range(1, patient.n_images + 1)]
        else:
            n_person += 1
            pid, organism = f"person{n_person}", "virus" if rng.random() < 0.35 else "bacteria"
            names = [f"{pid}_{organism}_{image_counter + k}.jpeg" for k in range(1, patient.n_images + 1)]
            image_counter += patient.n_images
        named.append((pid, names))
    return named


def _check_plan_arguments(n_images: int, split_fractions: tuple[float, float, float], label_noise: float) -> None:
    if n_images < 1:
        raise ValueError(f"n_images must be positive, got {n_images}")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or not math.isclose(sum(split_fractions), 1.0):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}")
    if not 0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")


def plan_dataset(
    n_images: int,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.05, 0.15),
    label_noise: float = 0.02,
    pneumonia_share: float = PNEUMONIA_SHARE,
) -> list[PlannedImage]:
    """Every film to write: split, folder label, true label, patient and file name. Draws no pixels.

    Exactly ``round(label_noise * n_images)`` films, chosen by the seed, get the other folder label.
    """
    _check_plan_arguments(n_images, split_fractions, label_noise)
    if not 0.05 <= pneumonia_share <= 0.95:
        raise ValueError(f"pneumonia_share must be in [0.05, 0.95], got {pneumonia_share}")
    rng = np.random.default_rng(seed)
    patients = _assign_splits(rng, _draw_patients(rng, n_images, pneumonia_share), split_fractions)
    flipped = set(rng.choice(n_images, size=round(label_noise * n_images), replace=False).tolist())
    plan = []
    for patient_index, (patient, (pid, names)) in enumerate(zip(patients, _file_names(patients, rng))):
        for name in names:
            index = len(plan)
            other = CLASS_NAMES[1 - CLASS_NAMES.index(patient.true_label)]
            label = other if index in flipped else patient.true_label
            plan.append(PlannedImage(index, patient_index, pid, patient.split, patient.true_label, label, name))
    return plan


# ---------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """A patient's chest, in image coordinates: x and y in [-1, 1], y pointing down."""

    body_half_width: float
    shoulder_y: float
    lung_x: float  # distance of each lung centre from the midline
    lung_y: float
    lung_half_width: float
    lung_half_height: float
    heart_x: float  # offset to the patient's left (viewer's right)
    heart_y: float
    heart_radii: tuple[float, float]
    mediastinum_half_width: float
    rib_spacing: float
    rib_curvature: float
    rib_phase: float


@dataclass(frozen=True)
class Opacity:
    """A patient's pneumonia: where it sits and how dense it is."""

    kind: str  # "patchy" or "lobar"
    sides: tuple[int, ...]  # -1: viewer's left lung (patient's right), +1: viewer's right
    centre: tuple[float, float]  # in lung units: (0, 0) is the lung centre, radius 1 its edge
    size: float  # radius of the patchy blobs, in image units
    density: float  # added brightness at the core, before exposure


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random but plausible chest proportions."""
    return Anatomy(
        body_half_width=rng.uniform(0.84, 0.96),
        shoulder_y=rng.uniform(-0.86, -0.74),
        lung_x=rng.uniform(0.4, 0.45),
        lung_y=rng.uniform(-0.12, -0.04),
        lung_half_width=rng.uniform(0.28, 0.32),
        lung_half_height=rng.uniform(0.56, 0.64),
        heart_x=rng.uniform(0.08, 0.15),
        heart_y=rng.uniform(0.3, 0.38),
        heart_radii=(rng.uniform(0.27, 0.34), rng.uniform(0.2, 0.26)),
        mediastinum_half_width=rng.uniform(0.09, 0.12),
        rib_spacing=rng.uniform(0.13, 0.16),
        rib_curvature=rng.uniform(1.1, 1.5),
        rib_phase=rng.uniform(0.0, 1.0),
    )


def draw_opacity(rng: np.random.Generator) -> Opacity:
    """A pneumonia focus, from faint and small (hard to see) to dense and lobar."""
    angle, radius = rng.uniform(0, 2 * np.pi), 0.6 * np.sqrt(rng.uniform())
    bilateral = rng.random() < 0.3
    return Opacity(
        kind="lobar" if rng.random() < 0.35 else "patchy",
        sides=(-1, 1) if bilateral else (int(rng.choice((-1, 1))),),
        centre=(radius * np.cos(angle), 0.2 + 0.8 * radius * np.sin(angle)),
        size=rng.uniform(0.08, 0.18),
        density=0.06 + 0.35 * rng.beta(2.0, 1.5),
    )


# ---------------------------------------------------------------- drawing


def _soft(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """0 outside, 1 inside, a smooth ramp of width ~edge across the boundary."""
    return 0.5 * (1.0 + np.tanh(signed_distance / edge))


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma_px, mode="wrap")
    return field / (field.std() + 1e-8)


def _film_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates of each pixel under a small random rotation, shift and zoom."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    angle = math.radians(np.clip(rng.normal(0, 2.5), -6, 6))
    zoom = rng.uniform(0.93, 1.07)
    dx, dy = rng.normal(0, 0.04, size=2).tolist()
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    return cos * (x - dx) + sin * (y - dy), cos * (y - dy) - sin * (x - dx)


def draw_body(u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Soft tissue: torso with sloping shoulders and a neck, thicker (brighter) at the midline."""
    width = anatomy.body_half_width * (1.0 + 0.06 * np.clip(v, -1, 0.5))  # rib cage widens downwards
    lateral = np.clip(np.abs(u) / width, 0, 1.3)
    shoulder_line = anatomy.shoulder_y + 0.3 * lateral**2.5 - 0.25 * _soft(0.24 - np.abs(u), 0.06)
    torso = _soft(1.0 - lateral, 0.03) * _soft(v - shoulder_line, 0.05)
    thickness = 0.7 + 0.3 * np.sqrt(np.clip(1.0 - lateral**2, 0, 1))
    return 0.45 * torso * thickness


def abdomen_below_diaphragm(u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Liver and abdomen under the two hemidiaphragm domes (1 below, 0 above)."""
    from_dome = np.abs(u) - anatomy.lung_x
    dome = np.where(from_dome > 0, 1.2 * from_dome**2, 0.4 * from_dome**2)  # steeper towards the chest wall
    diaphragm = anatomy.lung_y + 0.85 * anatomy.lung_half_height + dome
    inside = _soft(anatomy.body_half_width * 1.03 - np.abs(u), 0.03)
    return _soft(v - diaphragm, 0.04) * inside


def lung_shape(u: np.ndarray, v: np.ndarray, anatomy: Anatomy, side: int, inspiration: float) -> np.ndarray:
    """One lung field: narrow at the apex, wide at the dome-shaped base, straight medially (1 inside)."""
    half_height = anatomy.lung_half_height * inspiration * (0.97 if side < 0 else 1.0)  # liver lifts the right base
    centre_y = anatomy.lung_y + (inspiration - 1.0) * anatomy.lung_half_height * 0.5
    t = (v - centre_y) / half_height
    half_width = anatomy.lung_half_width * (0.5 + 0.5 * np.clip((t + 1) / 1.6, 0, 1) ** 0.6)
    medial = side * (u - side * anatomy.lung_x) < 0
    across = (u - side * anatomy.lung_x) / half_width
    radius = np.where(medial, np.hypot(np.abs(across) ** 1.6, t), np.hypot(across, t))
    return _soft(1.0 - radius, 0.05)


def draw_vascular_markings(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Thin branching ridges, densest at the hila and fading towards the lung periphery."""
    size = u.shape[0]
    ridges = np.exp(-((_smooth_noise(rng, size, size / 50) / 0.25) ** 2))
    hilum_distance = np.hypot(np.abs(u) - 0.14, (v - anatomy.lung_y - 0.05) / 1.3)
    return ridges * np.exp(-hilum_distance / 0.25) + 0.6 * np.exp(-((hilum_distance / 0.1) ** 2))


def draw_lung_fields(air: np.ndarray, markings: np.ndarray) -> np.ndarray:
    """Air in the lungs darkens the film; vessels add faint brighter structure."""
    return air * (-0.34 + 0.14 * markings)


def mediastinal_silhouette(u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Mediastinum, aortic knob and heart as one soft mask; the heart bulges to the patient's left."""
    above_heart = _soft(v - anatomy.shoulder_y, 0.05) * _soft(anatomy.heart_y - v, 0.05)
    centre = _soft(anatomy.mediastinum_half_width - np.abs(u), 0.03) * above_heart
    aortic_knob = _soft(0.1 - np.hypot((u - 0.08) / 1.2, v + 0.3), 0.04)
    rx, ry = anatomy.heart_radii
    heart = _soft(1.0 - np.hypot((u - anatomy.heart_x) / rx, (v - anatomy.heart_y) / ry), 0.05)
    return np.maximum.reduce([centre, aortic_knob, heart])


def draw_solid_organs(u: np.ndarray, v: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Mediastinum, heart and abdomen as dense soft tissue, with vertebral bodies faintly seen through."""
    vertebrae = _soft(0.055 - np.abs(u), 0.01) * (0.5 + 0.5 * np.cos(2 * np.pi * v / 0.1)) ** 2
    return 0.3 * solid + 0.04 * vertebrae


def draw_ribs(u: np.ndarray, v: np.ndarray, anatomy: Anatomy, air: np.ndarray) -> np.ndarray:
    """Posterior ribs arching down towards the chest wall, fainter anterior ribs sloping the other way."""
    lateral = np.maximum(np.abs(u) - 0.06, 0)
    posterior = (v + 0.5 * lateral - anatomy.rib_curvature * lateral**2) / anatomy.rib_spacing + anatomy.rib_phase
    anterior = (v - 0.35 * lateral) / (1.3 * anatomy.rib_spacing)
    bands = 0.8 * (0.5 + 0.5 * np.cos(2 * np.pi * posterior)) ** 6
    bands += 0.3 * (0.5 + 0.5 * np.cos(2 * np.pi * anterior)) ** 6
    cage = _soft(anatomy.body_half_width - 0.06 - np.abs(u), 0.03) * _soft(v - anatomy.shoulder_y - 0.08, 0.04)
    return bands * cage * _soft(0.75 - v, 0.08) * (0.03 + 0.1 * air)


def draw_clavicles(u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Two bony bars from the sternal notch, rising slightly towards the shoulders."""
    lateral = np.abs(u)
    line_y = anatomy.shoulder_y + 0.2 - 0.15 * (lateral - 0.1) + 0.25 * (lateral - 0.4) ** 2
    bar = _soft(0.03 - np.abs(v - line_y), 0.01)
    return 0.14 * bar * _soft(lateral - 0.08, 0.02) * _soft(0.75 - lateral, 0.05)


def _blob_cluster(rng: np.random.Generator, du: np.ndarray, dv: np.ndarray, radius: float) -> np.ndarray:
    """Three overlapping Gaussian blobs scattered around the origin of (du, dv), capped at 1."""
    blobs = np.zeros_like(du)
    for ox, oy in rng.normal(0, radius, size=(3, 2)).tolist():
        blobs += np.exp(-((du - ox) ** 2 + (dv - oy) ** 2) / (2 * radius**2))
    return np.clip(blobs, 0, 1)


def add_opacity(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    anatomy: Anatomy,
    opacity: Opacity,
    air: dict[int, np.ndarray],
) -> np.ndarray:
    """Pneumonic opacity confined to the affected lungs: patchy blobs or a lobar consolidation."""
    size = u.shape[0]
    patches = 0.55 + 0.45 * np.tanh(_smooth_noise(rng, size, size / 30))
    density = opacity.density * rng.uniform(0.75, 1.25)  # follow-up films vary a little
    total = np.zeros_like(u)
    for side in opacity.sides:
        cx = side * anatomy.lung_x + opacity.centre[0] * anatomy.lung_half_width
        cy = anatomy.lung_y + opacity.centre[1] * anatomy.lung_half_height
        if opacity.kind == "lobar":
            boundary = cy - 0.4 * anatomy.lung_half_height + 0.3 * side * (u - cx)
            region = _soft(v - boundary, 0.05) * (0.7 + 0.3 * patches)
        else:
            region = _blob_cluster(rng, u - cx, v - cy, opacity.size) * patches
        total += density * region * air[side]
    return total


def expose_film(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Density map -> 8-bit film: exposure, contrast, gamma, detector blur and quantum noise."""
    size = density.shape[0]
    film = np.clip(density, 0, 1) ** rng.uniform(0.75, 1.3)
    film = rng.uniform(0.85, 1.1) * film + rng.uniform(-0.05, 0.06)
    film = ndimage.gaussian_filter(film, rng.uniform(0.4, 1.1) * size / 128)
    film = film + rng.uniform(0.008, 0.03) * rng.standard_normal(film.shape, dtype=np.float32)
    return (np.clip(film, 0, 1) * 255 + 0.5).astype(np.uint8)


def portable_anatomy(anatomy: Anatomy) -> Anatomy:
    """AP portable film: the heart sits further from the detector and looks ~20% larger."""
    rx, ry = anatomy.heart_radii
    return replace(
        anatomy, heart_radii=(1.2 * rx, 1.15 * ry), mediastinum_half_width=1.25 * anatomy.mediastinum_half_width
    )


def acquire(rng: np.random.Generator, film: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Another scanner's rendering of an 8-bit film: resolution, blur, collimation, exposure, noise, polarity."""
    size = film.shape[0]
    pixels = film.astype(np.float32) / 255.0
    if acquisition.resolution < 1.0:
        small = max(8, round(size * acquisition.resolution))
        pixels = np.asarray(
            Image.fromarray(pixels).resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR)
        )
    if acquisition.blur_px > 0:
        pixels = ndimage.gaussian_filter(pixels, acquisition.blur_px * size / 128)
    if acquisition.portable:  # collimator shutters leave bright unexposed bands at the edges
        band = max(1, round(rng.uniform(0.04, 0.08) * size))
        pixels[:band], pixels[-band:], pixels[:, :band], pixels[:, -band:] = 0.9, 0.9, 0.9, 0.9
    pixels = pixels + acquisition.exposure + acquisition.noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    pixels = np.clip(pixels, 0, 1)
    return ((1.0 - pixels if acquisition.inverted else pixels) * 255 + 0.5).astype(np.uint8)


def render_chest_xray_and_opacity(
    image: PlannedImage,
    seed: int,
    image_size: int,
    acquisition: Acquisition = Acquisition(),
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The film of one planned image (uint8, image_size x image_size) and where its opacity lies (bool,
    same shape; None for a normal film): pixels where the drawn opacity adds at least
    OPACITY_MASK_FRACTION of its peak density. The mask draws no random numbers, so films are unchanged."""
    patient_rng = np.random.default_rng((seed, _PATIENT_STREAM, image.patient_index))
    anatomy = draw_anatomy(patient_rng)
    opacity = draw_opacity(patient_rng) if image.true_label == "PNEUMONIA" else None
    anatomy = portable_anatomy(anatomy) if acquisition.portable else anatomy
    rng = np.random.default_rng((seed, _IMAGE_STREAM, image.index))
    u, v = _film_grid(rng, image_size)
    inspiration = rng.uniform(0.94, 1.05) * (0.88 if acquisition.portable else 1.0)  # supine, shallow breath
    solid = np.maximum(mediastinal_silhouette(u, v, anatomy), abdomen_below_diaphragm(u, v, anatomy))
    air = {side: lung_shape(u, v, anatomy, side, inspiration) * (1 - solid) for side in (-1, 1)}
    both_lungs = np.maximum(air[-1], air[1])
    density = 0.04 + draw_body(u, v, anatomy) + draw_solid_organs(u, v, solid) + draw_clavicles(u, v, anatomy)
    density += draw_lung_fields(both_lungs, draw_vascular_markings(rng, u, v, anatomy))
    density += draw_ribs(u, v, anatomy, both_lungs)
    mask = None
    if opacity is not None:
        added = add_opacity(rng, u, v, anatomy, opacity, air)
        density += added
        mask = added >= OPACITY_MASK_FRACTION * added.max()
    film = expose_film(rng, density)
    if not acquisition.is_default:
        film = acquire(np.random.default_rng((seed, _ACQUISITION_STREAM, image.index)), film, acquisition)
    return film, mask


def render_chest_xray(image: PlannedImage, seed: int, image_size: int) -> np.ndarray:
    """The film of one planned image: uint8 array of shape (image_size, image_size)."""
    return render_chest_xray_and_opacity(image, seed, image_size)[0]


def opacity_mask_path(root: str | Path, image_relative_path: str | Path) -> Path:
    """Where the opacity mask of the film at root/image_relative_path lies (absent for normal films)."""
    return Path(root, OPACITY_MASKS_DIR, image_relative_path).with_suffix(".png")


# ---------------------------------------------------------------- writing


def _prepare_out_dir(out_dir: Path) -> None:
    """Create the empty split/class folders; refuse to write into a folder that holds anything."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty directory; synthetic images go only into a new or empty one")
    for split in SPLITS:
        for label in CLASS_NAMES:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)


def _write_provenance(
    root: Path, n_images: int, image_size: int, seed: int, label_noise: float, n_patients: int
) -> None:
    """SYNTHETIC.md at the root: says what the set is, and tells reports not to compare it with
    published results on real films."""
    (root / SYNTHETIC_MARKER).write_text(
        f"# Synthetic chest X-rays (pneumo.data.synthetic)\n\nNot real patients. {n_images} films of "
        f"{image_size} px from {n_patients} simulated patients, seed {seed}, {label_noise:.1%} of folder "
        f"labels flipped on purpose.\nWhere each opacity was drawn: {OPACITY_MASKS_DIR}/<split>/<folder>/<film>.png "
        f"(white = opacity; none for normal films).\nRegenerate with: pneumo data synth --out DIR --n {n_images} "
        f"--size {image_size} --seed {seed} --label-noise {label_noise}\n"
    )


def generate_chest_xrays(
    out_dir: str | Path,
    n_images: int = SynthConfig.n_images,
    image_size: int = SynthConfig.image_size,
    seed: int = SynthConfig.seed,
    label_noise: float = SynthConfig.label_noise,
    split_fractions: tuple[float, float, float] = (0.8, 0.05, 0.15),
    acquisition: Acquisition = Acquisition(),
    pneumonia_share: float = PNEUMONIA_SHARE,
) -> SynthSummary:
    """Write a synthetic Kaggle-layout chest X-ray set to out_dir (new or empty) and summarise it.

    Grayscale square JPEGs under ``out_dir/{train,val,test}/{NORMAL,PNEUMONIA}``. A fraction
    ``label_noise`` of the images lies in the wrong class folder (see ``plan_dataset``), which caps
    the best achievable accuracy at about ``1 - label_noise``. ``acquisition`` and ``pneumonia_share``
    imitate another hospital (monitoring benchmarks). Same arguments, same bytes.
    """
    plan = plan_dataset(n_images, seed, split_fractions, label_noise, pneumonia_share)
    root = Path(out_dir)
    _prepare_out_dir(root)
    counts = {split: {label: 0 for label in CLASS_NAMES} for split in SPLITS}
    for image in plan:
        pixels, mask = render_chest_xray_and_opacity(image, seed, image_size, acquisition)
        Image.fromarray(pixels).save(root / image.relative_path, format="JPEG", quality=JPEG_QUALITY)
        if mask is not None:
            mask_path = opacity_mask_path(root, image.relative_path)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        counts[image.split][image.label] += 1
    n_patients = len({image.patient_index for image in plan})
    _write_provenance(root, n_images, image_size, seed, label_noise, n_patients)
    return SynthSummary(root, counts, n_patients, label_noise)

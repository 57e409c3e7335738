"""Typed experiment configuration: dataclass defaults, YAML files that hold only changes, CLI overrides.

    cfg = load_config(["experiments/quickstart.yaml"], ["train.lr=3e-4"])

An experiment file may name the file it extends with ``base: other.yaml`` (relative to itself).
Files merge left to right over the dataclass defaults, then ``key=value`` overrides. A misspelled
key, a wrong type, a value outside its choices or a missing required value raises ``ConfigError``
naming the key and the file before any work starts. This module imports only omegaconf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and where it came from."""


T = TypeVar("T")
MODES = ("max", "min")  # which way a metric improves
MAX_IMAGE_PIXELS = 40_000_000  # default of data.max_image_pixels and serve.max_image_pixels (decompression bombs)
THRESHOLD_POLICIES = ("fixed", "youden", "sensitivity", "specificity")  # how eval picks the decision threshold


def improves(new: float, old: float, mode: str) -> bool:
    """Whether `new` is strictly better than `old` for a metric optimised in `mode` (max | min)."""
    return new > old if mode == "max" else new < old


def best_of(items: Iterable[T], mode: str, key: Callable[[T], float]) -> T:
    """The item whose `key` is best in `mode` (max | min); the first of equals; NaN keys never win."""
    best = None
    for item in items:
        if math.isnan(key(item)):
            continue
        if best is None or improves(key(item), key(best), mode):
            best = item
    if best is None:
        raise ValueError("best_of: no items")
    return best


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}={value!r} must be between {low} and {high}")


@dataclass
class SynthConfig:
    n_images: int = 1200  # images generated across train/val/test
    image_size: int = 128  # side of the generated square JPEGs, px
    seed: int = 0  # same seed, same bytes
    label_noise: float = 0.02  # fraction of folder labels flipped; best accuracy ~ 1 - label_noise


@dataclass
class AugmentConfig:
    rotation_deg: float = 7.0  # max absolute rotation of training images, degrees
    scale: float = 0.08  # max relative zoom in or out
    translate: float = 0.04  # max shift as a fraction of the image side
    brightness: float = 0.15  # max relative brightness change
    contrast: float = 0.15  # max relative contrast change
    horizontal_flip: bool = False  # off: it moves the heart to the right (situs inversus)


@dataclass
class DataConfig:
    path: str = MISSING  # Kaggle-layout folder, MedMNIST .npz, or CSV/Parquet manifest (local or s3://, gs://)
    format: str = "auto"  # auto (from the path) | folder | npz | manifest
    synthesize_if_missing: bool = False  # write the synthetic set to `path` when it is empty
    synth: SynthConfig = field(default_factory=SynthConfig)
    resplit_val: bool = True  # rebuild val from train+val by patient (Kaggle's val has 16 images)
    val_fraction: float = 0.1  # share of train+val patients moved to val when resplit_val
    split_seed: int = 0  # seed of the patient-grouped split
    split_fractions: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1]
    )  # train/val/test, manifests without split
    cache_dir: Optional[str] = None  # decoded images kept here across runs, keyed by files and preprocessing
    on_bad_file: str = "skip"  # skip: drop and count unreadable images; error: stop the run
    image_size: Optional[int] = None  # input side in px; None takes the model's default
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger files are counted as unreadable (decompression bombs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, ("auto", "folder", "npz", "manifest"))
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(
                f"data.split_fractions={list(self.split_fractions)} must be three shares "
                "(train, val, test) that sum to 1"
            )
        _check_choice("data.on_bad_file", self.on_bad_file, ("skip", "error"))
        _check_range("data.val_fraction", self.val_fraction, 0.01, 0.9)


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm model name (timm.list_models())
    pretrained: bool = False  # load the timm hub weights (needs internet or a warm HF cache)
    weights_path: Optional[str] = None  # local .safetensors/.pth/.bin weights, for offline clusters
    in_chans: int = 1  # 1: grayscale films; pretrained RGB stems are summed to one channel
    drop_rate: float = 0.0  # dropout before the classifier
    global_pool: Optional[str] = None  # head pooling (timm): avg | max | avgmax | catavgmax; None: the model's own


@dataclass
class TrainConfig:
    epochs: int = 5  # passes over the training split
    batch_size: int = 32  # images per worker per step
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak learning rate, reached after warmup
    weight_decay: float = 0.05  # decoupled weight decay
    lr_schedule: str = "cosine"  # cosine: warmup then cosine decay to 0; constant: warmup then flat
    warmup_epochs: float = 0.5  # linear warmup length, epochs (fractions allowed)
    grad_clip_norm: float = 1.0  # max global gradient norm; 0 disables clipping
    class_weighting: str = "balanced"  # balanced: weight positives by negatives/positives; none
    seed: int = 0  # seeds weights, augmentation, batch order and the trials a search draws: one seed, one model
    precision: str = (
        "auto"  # fp32 | bf16 | fp16 (with loss scaling) | auto (bf16 autocast where the GPU/CPU has native bf16)
    )
    channels_last: bool = True  # NHWC activations: faster convolutions on CPUs (oneDNN) and GPUs
    compile: bool = False  # torch.compile the model: ~1 min of compiling; slower on the 2-core CPUs measured
    checkpoints_to_keep: int = 2  # best checkpoints kept by tune.metric (val_auroc by default)

    def __post_init__(self) -> None:
        _check_choice("train.optimizer", self.optimizer, ("adamw", "sgd"))
        _check_choice("train.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        _check_choice("train.class_weighting", self.class_weighting, ("balanced", "none"))
        _check_choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoints_to_keep < 1:
            raise ConfigError("train.epochs, train.batch_size and train.checkpoints_to_keep must be >= 1")


# glibc's malloc returns every block above its adaptive mmap threshold (<= 32 MB) to the kernel on
# free, so each training step maps and page-faults its large activations afresh, twice as often in
# Ray Train's training thread (a non-main arena). Keeping blocks up to 256 MB in the heap cuts page
# faults ~7x and system time ~8x in a resnet18 step on CPU (bench/train_bench.py; docs/decisions/training-speed.md).
TRAINING_MALLOC = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"


@dataclass
class ClusterScalingConfig:
    """The `scaling:` section: training workers, GPUs, storage and restarts (not named ScalingConfig,
    which is Ray Train's own class)."""

    num_workers: int = 2  # data-parallel training workers
    use_gpu: bool = False  # one GPU per worker, NCCL backend
    cpus_per_worker: float = 0.45  # fractional on small machines: Ray Data needs free CPU or it hangs
    storage_path: str = "results"  # checkpoints and Ray results; shared storage (s3://…) on clusters
    max_failures: int = 0  # restarts from the latest checkpoint after a worker or node dies; -1: unlimited
    placement_strategy: str = "PACK"  # PACK: fill a node first | SPREAD: workers on different nodes
    worker_env: dict[str, str] = field(
        default_factory=lambda: {"GLIBC_TUNABLES": TRAINING_MALLOC}
    )  # training workers' env

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("scaling.num_workers must be >= 1")
        _check_choice(
            "scaling.placement_strategy", self.placement_strategy, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
        )
        if self.cpus_per_worker <= 0:
            raise ConfigError("scaling.cpus_per_worker must be > 0 (fractions such as 0.45 are fine)")


@dataclass
class EvalConfig:
    threshold_policy: str = "youden"  # fixed | youden | sensitivity | specificity, chosen on val
    threshold: float = 0.5  # the threshold used by the `fixed` policy
    target_sensitivity: float = 0.95  # the `sensitivity` policy's floor (screening use)
    target_specificity: float = 0.90  # the `specificity` policy's floor
    batch_size: int = 64  # images per inference batch
    calibration: str = "platt"  # fitted on val, stored with the model: platt (T and bias) | temperature | none
    calibration_bins: int = 15  # equal-width bins of the reliability diagram and ECE
    bootstrap_samples: int = 1000  # resamples of the test set for confidence intervals; 0 disables
    confidence_level: float = 0.95  # width of the bootstrap intervals
    baselines: str = "auto"  # published figures to compare with: auto | kaggle | pneumoniamnist | none
    report: bool = True  # write the pictures and report.html (and log them to MLflow)
    mistakes_shown: int = 16  # most confident test mistakes in the report grid (false negatives first)

    def __post_init__(self) -> None:
        _check_choice("eval.threshold_policy", self.threshold_policy, THRESHOLD_POLICIES)
        _check_choice("eval.calibration", self.calibration, ("temperature", "platt", "none"))
        _check_choice("eval.baselines", self.baselines, ("auto", "kaggle", "pneumoniamnist", "none"))
        for key in ("threshold", "target_sensitivity", "target_specificity"):
            _check_range(f"eval.{key}", getattr(self, key), 0.0, 1.0)
        _check_range("eval.confidence_level", self.confidence_level, 0.5, 0.999)
        if self.bootstrap_samples < 0 or self.calibration_bins < 2 or self.mistakes_shown < 0:
            raise ConfigError("eval.bootstrap_samples and eval.mistakes_shown must be >= 0, eval.calibration_bins >= 2")


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment_name: str = "pneumo"  # MLflow experiment holding the runs
    registered_model_name: str = "pneumo-pneumonia"  # registry name; serving reads NAME@champion
    champion_metric: str = "test_auroc"  # a new version takes `champion` only if it beats this
    champion_mode: str = "max"  # max: a higher champion_metric is better | min (for a loss)
    register: bool = True  # register the evaluated best checkpoint in the model registry
    system_metrics_interval_s: float = (
        10.0  # seconds between samples of CPU/memory/GPU use (system/*) per training run; 0: off
    )

    def __post_init__(self) -> None:
        _check_choice("mlflow.champion_mode", self.champion_mode, MODES)


EPOCH_METRICS = ("val_auroc", "val_loss", "val_accuracy", "train_loss")  # reported by every epoch


@dataclass
class TuneConfig:
    num_samples: int = 0  # trials; 0 trains once without a search
    search_space: dict[str, Any] = field(default_factory=dict)  # dotted key -> {loguniform: [a, b]}…
    metric: str = "val_auroc"  # per-epoch metric the search optimises; also keeps and picks checkpoints
    mode: str = "max"  # max | min
    scheduler: str = "asha"  # asha (early stopping on per-epoch metrics) | fifo
    searcher: str = "random"  # random (and grid) | optuna
    max_concurrent_trials: int = 1  # trials at once; each runs scaling.num_workers workers
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of trials at each rung
    time_budget_s: Optional[float] = None  # stop starting trials after this many seconds

    def __post_init__(self) -> None:
        _check_choice("tune.metric", self.metric, EPOCH_METRICS)
        _check_choice("tune.mode", self.mode, MODES)
        _check_choice("tune.scheduler", self.scheduler, ("asha", "fifo"))
        _check_choice("tune.searcher", self.searcher, ("random", "optuna"))


@dataclass
class ExportConfig:
    onnx: bool = True  # export model.onnx at registration, checked on val against PyTorch (serve.runtime uses it)
    probability_tolerance: float = 1e-3  # largest |P(pneumonia) - PyTorch's| on val, any runtime (OpenVINO runs f32)
    int8: bool = False  # also write model.int8.onnx (static quantization calibrated on training films)
    int8_calibration_films: int = 256  # training films that set the int8 activation ranges
    max_int8_auroc_drop: float = 0.002  # the int8 model is kept only if val AUROC drops at most this much

    def __post_init__(self) -> None:
        _check_range("export.probability_tolerance", self.probability_tolerance, 0.0, 1.0)
        _check_range("export.max_int8_auroc_drop", self.max_int8_auroc_drop, 0.0, 1.0)


@dataclass
class ServeConfig:
    model_uri: Optional[str] = None  # None: models:/<registered_model_name>@champion; or a run/checkpoint
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the endpoint beyond this machine
    port: int = 8000  # HTTP port
    num_replicas: int = 1  # fixed replicas (ignored when autoscaling)
    autoscaling: bool = False  # scale replicas between min_replicas and max_replicas on load
    min_replicas: int = 1  # fewest replicas when autoscaling
    max_replicas: int = 2  # most replicas when autoscaling
    cpus_per_replica: float = 0.5  # Ray CPUs reserved per replica
    torch_threads: int = 1  # intra-op threads per replica; replicas x threads <= cores
    max_batch_size: int = 16  # dynamic batch across concurrent requests
    batch_wait_timeout_s: float = 0.0  # extra wait to fill a batch beyond what queued during the last call
    max_ongoing_requests: int = 32  # per replica; must be >= max_batch_size
    max_queued_requests: int = 64  # beyond this the endpoint answers 503 at once
    max_body_bytes: int = 10_000_000  # larger uploads get 413
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are refused as decompression bombs
    max_images_per_request: int = 32  # cap of /predict/batch
    ingress: str = "proxy"  # proxy (Ray Serve's Python proxy) | haproxy (Ray's HAProxy ingress, C)
    runtime: str = "auto"  # auto (fastest installed, measured at load) | torch | onnxruntime | openvino
    int8: bool = False  # serve model.int8.onnx (written at registration with export.int8; not with torch)
    challenger: Optional[str] = "challenger"  # registry alias served beside the champion; null: champion only
    traffic: float = 0.0  # share of requests answered by the challenger (canary), 0..1
    shadow: bool = False  # also score every request on the challenger; answers still come from the champion
    poll_interval_s: float = 30.0  # how often replicas check whether an alias moved; 0: never
    drain_timeout_s: float = 30.0  # on SIGTERM/Ctrl-C, longest wait for in-flight requests to finish
    auth_token_env: str = "PNEUMO_SERVE_TOKEN"  # env variable holding the bearer token; unset or empty: no auth
    auth_token_file: Optional[str] = None  # file holding the bearer token (wins over auth_token_env)
    allow_unauthenticated_remote: bool = False  # true: serve a non-loopback host without a token, on purpose
    audit_dir: Optional[str] = None  # JSON-lines audit log of every prediction, one file per replica; None: off
    audit_max_bytes: int = 10_000_000  # an audit file rotates at this size, bytes
    audit_backups: int = 5  # rotated audit files kept per replica
    ood_policy: str = "reject"  # out-of-distribution images: reject (422) | flag (200, in_distribution false) | off
    drift_window: int = 200  # recent inputs per replica that GET /monitoring compares with the reference
    drift_min_inputs: int = 50  # inputs in the window before drift is tested
    drift_interval_s: float = 60.0  # how often each replica retests its window for the Prometheus gauges, s

    def __post_init__(self) -> None:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError("serve.max_ongoing_requests must be >= serve.max_batch_size")
        _check_choice("serve.ingress", self.ingress, ("proxy", "haproxy"))
        _check_choice("serve.runtime", self.runtime, ("auto", "torch", "onnxruntime", "openvino"))
        _check_range("serve.traffic", self.traffic, 0.0, 1.0)
        if (self.traffic > 0 or self.shadow) and not self.challenger:
            raise ConfigError("serve.traffic and serve.shadow need serve.challenger (a registry alias)")
        _check_choice("serve.ood_policy", self.ood_policy, ("reject", "flag", "off"))
        if not 10 <= self.drift_min_inputs <= self.drift_window or self.drift_interval_s <= 0:
            raise ConfigError(
                "serve.drift_min_inputs must be between 10 and serve.drift_window, serve.drift_interval_s > 0"
            )


@dataclass
class ExperimentConfig:
    name: str = MISSING  # experiment name: MLflow run names and the results folder
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ClusterScalingConfig = field(default_factory=ClusterScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The file and every `base:` it extends, outermost base first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to this file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    base = raw.pop("base", None)
    chain = _read_with_bases(path.parent / str(base), seen + (path,)) if base else []
    return chain + [(path, raw)]


def _describe(error: OmegaConfBaseException) -> str:
    """`train.lrr: Key 'lrr' not in 'TrainConfig'. Did you mean: 'lr'?` (omegaconf's first line)."""
    key = getattr(error, "full_key", None)
    return (f"{key}: " if key else "") + str(error).split("\n")[0]


def _replace_search_dimensions(merged: DictConfig, layer: DictConfig) -> None:
    """A search dimension redefined by a later file replaces the earlier one instead of merging
    into it ({loguniform: …} and {grid: …} for the same key would make no distribution)."""
    redefined = OmegaConf.select(layer, "tune.search_space", default=None)
    if isinstance(redefined, DictConfig):
        for key in redefined:
            merged.tune.search_space.pop(key, None)


def load_config(paths: list[str | Path], overrides: list[str] = ()) -> ExperimentConfig:
    """Merge dataclass defaults, YAML files (with their bases) and `key=value` overrides."""
    merged = OmegaConf.structured(ExperimentConfig)
    for path in paths:
        for source, layer in _read_with_bases(Path(path)):
            try:
                _replace_search_dimensions(merged, layer)
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as error:
                raise ConfigError(f"{source}: {_describe(error)}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise ConfigError(f"command-line override: {_describe(error)}") from None
    return _to_object(merged, paths)


def _to_object(merged: DictConfig, paths: list[str | Path]) -> ExperimentConfig:
    sources = ", ".join(str(p) for p in paths) or "defaults"
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{sources}: {_describe(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{sources}: {error}") from None


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict: what travels to Ray workers and into MLflow."""
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Rebuild (and re-check) a config on a Ray worker from `to_dict` output."""
    merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(values))
    return _to_object(merged, [])


def with_updates(cfg: ExperimentConfig, updates: dict[str, Any], source: str = "overrides") -> ExperimentConfig:
    """A checked copy with dotted keys replaced, e.g. {"train.lr": 3e-4, "model.name": "resnet34"}."""
    merged = OmegaConf.structured(cfg)
    try:
        for key, value in updates.items():
            OmegaConf.update(merged, key, value, merge=False)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None
    return _to_object(merged, [source])


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists and dicts in leaves become strings."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    return flat

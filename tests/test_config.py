"""Config loading: defaults, inheritance, overrides, and each kind of error users can make."""

from dataclasses import replace
from pathlib import Path

import pytest

from pneumo.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    flatten,
    from_dict,
    load_config,
    to_dict,
    with_updates,
)
from pneumo.models.networks import create_model

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_experiment_file_loads():
    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert files, "experiments/ holds no YAML"
    for file in files:
        cfg = load_config([file])
        assert isinstance(cfg, ExperimentConfig) and cfg.name


def test_quickstart_values_override_defaults():
    cfg = load_config([REPO / "experiments" / "quickstart.yaml"])
    assert cfg.name == "quickstart"
    assert cfg.data.synthesize_if_missing is True
    assert cfg.model.name == "resnet10t"
    assert cfg.train.optimizer == "adamw"  # untouched default


def test_base_chain_and_cli_override(tmp_path):
    write(tmp_path / "parent.yaml", "name: parent\ndata: {path: /data/x}\ntrain: {lr: 0.01, epochs: 3}\n")
    write(tmp_path / "child.yaml", "base: parent.yaml\nname: child\ntrain: {epochs: 7}\n")
    cfg = load_config([tmp_path / "child.yaml"], ["train.lr=3e-4", "model.name=resnet18"])
    assert (cfg.name, cfg.train.epochs, cfg.train.lr, cfg.data.path) == ("child", 7, 3e-4, "/data/x")
    assert cfg.model.name == "resnet18"


def test_later_files_win(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\ndata: {path: p}\ntrain: {batch_size: 8}\n")
    b = write(tmp_path / "b.yaml", "train: {batch_size: 64}\n")
    assert load_config([a, b]).train.batch_size == 64


def test_misspelled_key_names_key_file_and_suggestion(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\ndata: {path: p}\nmodel: {nmae: resnet18}\n")
    with pytest.raises(ConfigError) as error:
        load_config([bad])
    message = str(error.value)
    assert "bad.yaml" in message and "model.nmae" in message and "Did you mean: 'name'" in message


def test_wrong_type_names_key(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\ndata: {path: p}\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.epochs"):
        load_config([bad])


def test_missing_required_value(tmp_path):
    no_path = write(tmp_path / "nopath.yaml", "name: x\n")
    with pytest.raises(ConfigError, match=r"nopath\.yaml.*data\.path|missing mandatory value: path"):
        load_config([no_path])


def test_value_outside_choices(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", "name: x\ndata: {path: p}\n")
    with pytest.raises(ConfigError, match="train.optimizer='lamb'"):
        load_config([cfg_file], ["train.optimizer=lamb"])


def test_override_typo_is_reported_as_override(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", "name: x\ndata: {path: p}\n")
    with pytest.raises(ConfigError, match=r"override.*train\.lrr.*Did you mean: 'lr'"):
        load_config([cfg_file], ["train.lrr=1"])


def test_missing_file_and_base_loop(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    write(tmp_path / "loop.yaml", "base: loop.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config([tmp_path / "loop.yaml"])


def test_round_trip_through_plain_dict():
    cfg = load_config([REPO / "experiments" / "quickstart.yaml"], ["train.lr=0.005"])
    assert from_dict(to_dict(cfg)) == cfg


def test_with_updates_checks_keys_and_types():
    cfg = load_config([REPO / "experiments" / "quickstart.yaml"])
    assert with_updates(cfg, {"train.lr": 1e-4, "model.name": "resnet18"}).train.lr == 1e-4
    with pytest.raises(ConfigError, match="train.nope"):
        with_updates(cfg, {"train.nope": 1})
    with pytest.raises(ConfigError, match="train.epochs"):
        with_updates(cfg, {"train.epochs": "lots"})


def test_flatten_handles_nested_dicts_and_lists():
    flat = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None})
    assert flat == {"a.b": 1, "a.c.d": "[1, 2]", "e": "{}", "f": None}


def test_search_dimension_in_a_later_file_replaces_the_earlier_one(tmp_path):
    write(
        tmp_path / "parent.yaml",
        "name: p\ndata: {path: d}\n"
        "tune: {num_samples: 2, search_space: {train.lr: {loguniform: [0.001, 0.01]}, train.epochs: {choice: [1, 2]}}}\n",
    )
    write(tmp_path / "child.yaml", "base: parent.yaml\ntune: {search_space: {train.lr: {grid: [0.1, 0.2]}}}\n")
    space = load_config([tmp_path / "child.yaml"]).tune.search_space
    assert space == {"train.lr": {"grid": [0.1, 0.2]}, "train.epochs": {"choice": [1, 2]}}


def models_named(cfg: ExperimentConfig) -> list[ModelConfig]:
    """The model of `cfg` and one per model.name a search may pick (choice or grid), without hub weights
    or local weight files (those are checked when a run starts; here only the architecture must exist)."""
    spec = cfg.tune.search_space.get("model.name", {}) if cfg.tune.num_samples > 0 else {}
    names = [cfg.model.name, *[name for values in spec.values() for name in values]]
    return [replace(cfg.model, name=name, pretrained=False, weights_path=None) for name in dict.fromkeys(names)]


EXPERIMENT_MODELS = {
    repr(model): model
    for file in sorted((REPO / "experiments").glob("*.yaml"))
    for model in models_named(load_config([file]))
}  # each distinct model once (resnet50 ~1 s)


@pytest.mark.parametrize("model_cfg", EXPERIMENT_MODELS.values(), ids=[m.name for m in EXPERIMENT_MODELS.values()])
def test_every_model_an_experiment_names_builds(model_cfg):
    model = create_model(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_misspelt_model_in_a_search_fails_to_build(tmp_path):
    write(
        tmp_path / "typo.yaml",
        "name: typo\ndata: {path: d}\n"
        "tune: {num_samples: 2, search_space: {model.name: {choice: [test_resnet, resnt50]}}}\n",
    )
    typo = models_named(load_config([tmp_path / "typo.yaml"]))[-1]
    with pytest.raises(ConfigError, match="model.name='resnt50'"):
        create_model(typo)


def test_best_of_follows_the_mode_keeps_the_first_of_equals_and_skips_nan():
    from pneumo.config import best_of

    rows = [("a", float("nan")), ("b", 0.7), ("c", 0.9), ("d", 0.9), ("e", 0.2)]
    assert best_of(rows, "max", lambda row: row[1])[0] == "c"
    assert best_of(rows, "min", lambda row: row[1])[0] == "e"
    with pytest.raises(ValueError):
        best_of([("a", float("nan"))], "max", lambda row: row[1])

"""Which served version answers a request: canary share, explicit picks, unknown versions (fast, no Ray)."""

import random

import pytest
import torch

from pneumo.config import ConfigError, ModelConfig, ServeConfig
from pneumo.models.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from pneumo.models.networks import create_model, resolve_preprocessing
from pneumo.models.runtimes import TorchPredictor
from pneumo.registry.uri import FetchedModel
from pneumo.serve.inputs import RequestError
from pneumo.serve.loader import ServedModel
from pneumo.serve.versions import CHALLENGER, CHAMPION, alias_uri, route


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, ServedModel]:
    cfg = ModelConfig(name="test_resnet", in_chans=1)
    model = create_model(cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=32)
    folder = save_checkpoint(tmp_path_factory.mktemp("routing"), model, CheckpointMeta(cfg.__dict__, spec.to_dict()))
    loaded = load_checkpoint(folder)
    predictor = TorchPredictor(loaded, threads=torch.get_num_threads())
    return {
        role: ServedModel(FetchedModel(loaded, f"models:/m/{version}", "m", version, {}), predictor, 0.0)
        for role, version in ((CHAMPION, "3"), (CHALLENGER, "4"))
    }


@pytest.mark.parametrize("traffic", [0.0, 0.1, 0.5, 1.0])
def test_the_challenger_answers_its_traffic_share(versions, traffic):
    draws = random.Random(0)
    roles = [route(None, versions, traffic, draws.random()) for _ in range(4000)]
    assert roles.count(CHALLENGER) / len(roles) == pytest.approx(traffic, abs=0.02)


def test_without_a_loaded_challenger_the_champion_answers_everything(versions):
    assert {route(None, {CHAMPION: versions[CHAMPION]}, 1.0, draw) for draw in (0.0, 0.5, 0.99)} == {CHAMPION}


@pytest.mark.parametrize(
    "asked, role", [("champion", CHAMPION), ("challenger", CHALLENGER), ("3", CHAMPION), ("4", CHALLENGER)]
)
def test_a_request_picks_a_version_by_role_or_number_whatever_the_traffic(versions, asked, role):
    assert route(asked, versions, traffic=0.0 if role == CHALLENGER else 1.0, draw=0.5) == role


def test_an_unknown_version_is_a_404_that_names_the_served_versions(versions):
    with pytest.raises(RequestError) as error:
        route("7", versions, 0.0, 0.5)
    assert error.value.status == 404
    assert "'7' is not served" in str(error.value) and "champion (version 3), challenger (version 4)" in str(
        error.value
    )


def test_challenger_uri_follows_the_registered_name_and_only_aliases_have_one():
    assert alias_uri("models:/pneumo-pneumonia@champion", "challenger") == "models:/pneumo-pneumonia@challenger"
    assert alias_uri("models:/pneumo-pneumonia/3", "challenger") is None
    assert alias_uri("/models/checkpoint", "challenger") is None


def test_canary_and_shadow_need_a_challenger_alias():
    with pytest.raises(ConfigError, match="serve.traffic=1.5 must be between"):
        ServeConfig(traffic=1.5)
    with pytest.raises(ConfigError, match="need serve.challenger"):
        ServeConfig(shadow=True, challenger=None)

"""The search space: each YAML distribution becomes the Ray Tune domain it names; bad specs name the key."""

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

from pneumo.config import ConfigError
from pneumo.training.tune import DISTRIBUTIONS, build_search_space


def test_each_distribution_kind_builds_its_tune_domain():
    space = build_search_space(
        {
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "train.weight_decay": {"uniform": [0.0, 0.1]},
            "train.batch_size": {"randint": [8, 64]},
            "model.name": {"choice": ["resnet10t", "resnet18"]},
            "model.drop_rate": {"grid": [0.0, 0.2]},
        }
    )
    lr, decay, batch = space["train.lr"], space["train.weight_decay"], space["train.batch_size"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(decay, Float) and isinstance(decay.get_sampler(), Uniform) and decay.upper == 0.1
    assert isinstance(batch, Integer) and (batch.lower, batch.upper) == (8, 64)
    assert isinstance(space["model.name"], Categorical) and space["model.name"].categories == ["resnet10t", "resnet18"]
    assert space["model.drop_rate"] == {"grid_search": [0.0, 0.2]}
    assert set(DISTRIBUTIONS) == {"loguniform", "uniform", "randint", "choice", "grid"}, "each kind is tested above"


@pytest.mark.parametrize("spec", [{"lognormal": [1, 2]}, [1e-4, 1e-2], {"uniform": [0, 1], "choice": [1]}, 0.01])
def test_a_bad_spec_names_the_key_and_the_kinds(spec):
    with pytest.raises(ConfigError) as error:
        build_search_space({"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.momentum": spec})
    message = str(error.value)
    assert message.startswith("tune.search_space.train.momentum:") and "loguniform" in message and "grid" in message

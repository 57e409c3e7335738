"""The search space: each YAML distribution becomes the Ray Tune domain it names; bad specs name the key; the
searcher is seeded by train.seed."""

import pytest
from conftest import QUICKSTART
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

from pneumo.config import ConfigError, load_config
from pneumo.training.tune import DISTRIBUTIONS, build_search_space, build_searcher


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


def drawn_learning_rates(tmp_path, seed: int) -> list[float]:
    """The learning rates a 4-trial random search of the quickstart's space draws, through a real Tune run."""
    from ray import tune

    cfg = load_config([QUICKSTART], [f"train.seed={seed}", "tune.num_samples=4"])
    tuner = tune.Tuner(
        lambda config: tune.report({"lr": config["train.lr"]}),
        param_space=build_search_space(cfg.tune.search_space),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(cfg), num_samples=cfg.tune.num_samples, reuse_actors=True
        ),  # one actor for the trials in turn (this trainable keeps no state): the test took 24 s, now 5 s
        run_config=tune.RunConfig(storage_path=str(tmp_path / f"seed-{seed}"), verbose=0),
    )
    return sorted(result.metrics["lr"] for result in tuner.fit())


@pytest.mark.slow
def test_train_seed_fixes_the_trials_a_random_search_draws(ray_session, tmp_path):
    """Run again, the same experiment searches the same learning rates (and so can register the same
    champion; Ray's default random searcher drew others each time); another train.seed draws others."""
    first = drawn_learning_rates(tmp_path / "first", 0)
    assert len(set(first)) == 4 and all(2e-3 <= lr <= 8e-3 for lr in first)
    assert drawn_learning_rates(tmp_path / "again", 0) == first
    assert drawn_learning_rates(tmp_path / "other", 1) != first

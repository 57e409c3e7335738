"""Relative storage paths never land in a folder that vanishes (pneumo/paths.py).

These tests fake a Ray job package folder by its path; tests/test_cluster.py submits a real job to a
real token-authenticated head and checks that its MLflow store, results and cache outlive the job.
"""

from pathlib import Path

import pytest
from conftest import QUICKSTART

from pneumo.config import ConfigError, load_config
from pneumo.paths import anchor_paths, describe_storage, durable_path, durable_tracking_uri, temporary_reason
from pneumo.tracking import resolve_tracking_uri


@pytest.fixture
def job_package(tmp_path, monkeypatch) -> Path:
    """The working directory of a `ray job submit --working-dir .` entrypoint, by Ray's naming."""
    package = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return package


def test_a_normal_working_directory_keeps_relative_paths_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert temporary_reason() is None
    assert durable_path("results") == str(tmp_path.resolve() / "results")
    assert durable_tracking_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert durable_path("s3://bucket/x") == "s3://bucket/x" and durable_path("/abs/x") == "/abs/x"


def test_a_ray_job_package_sends_every_relative_path_to_pneumo_home(job_package, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    assert "Ray's unpacked job package" in temporary_reason()
    cfg = anchor_paths(load_config([QUICKSTART]))
    assert cfg.mlflow.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert resolve_tracking_uri(load_config([QUICKSTART]).mlflow) == cfg.mlflow.tracking_uri
    assert cfg.scaling.storage_path == str(home / "results")
    assert cfg.data.cache_dir == str(home / "data" / "cache")
    assert cfg.data.path == str(home / "data" / "synthetic-chest-xray"), "generated data goes home too"
    explicit = anchor_paths(
        load_config([QUICKSTART], ["mlflow.tracking_uri=sqlite:///x.db", "scaling.storage_path=s3://bucket/results"])
    )
    assert (explicit.mlflow.tracking_uri, explicit.scaling.storage_path) == (
        f"sqlite:///{home / 'x.db'}",
        "s3://bucket/results",
    )
    assert f"PNEUMO_HOME={home}" in describe_storage(cfg) and str(job_package) in describe_storage(cfg)


def test_data_shipped_with_the_job_is_read_where_it_is(job_package, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    (job_package / "data" / "synthetic-chest-xray").mkdir(parents=True)
    cfg = anchor_paths(load_config([QUICKSTART]))
    assert cfg.data.path == str(job_package / "data" / "synthetic-chest-xray")


@pytest.mark.parametrize("home", ["inside-the-package", "/proc/no-such-home"])
def test_a_home_that_would_vanish_or_cannot_be_written_refuses_to_start(job_package, monkeypatch, home):
    monkeypatch.setenv("PNEUMO_HOME", home)
    with pytest.raises(ConfigError) as refused:
        anchor_paths(load_config([QUICKSTART]))
    assert "PNEUMO_HOME" in str(refused.value)
    assert "mlflow.tracking_uri" in str(refused.value) and "scaling.storage_path" in str(refused.value)


@pytest.mark.parametrize("kind", ["eval", "monitor"])
def test_scoring_reports_default_to_pneumo_home_inside_a_ray_job(job_package, tmp_path, monkeypatch, kind):
    """`pneumo eval` and `pneumo monitor` without --out: their report folder outlives the job's package."""
    from pneumo.jobs.scoring import default_report_dir
    from pneumo.registry.uri import FetchedModel

    home = tmp_path / "home"
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    model = FetchedModel(
        loaded=None, uri="models:/pneumo pneumonia/3", name="pneumo pneumonia", version="3", metrics={}
    )
    folder = default_report_dir(model, kind, "test")
    assert folder.parent == home / "reports" and not str(folder).startswith(str(job_package))
    assert folder.name.startswith(f"pneumo_pneumonia-3-{kind}-test-")

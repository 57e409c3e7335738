"""The lines a command prints about its MLflow run: the link opens a search's trials or a single run in
the model-training view, a local store gets the `mlflow ui` command that serves the link, and no
password from a server's URI is printed (fast: a sqlite store, no Ray)."""

from mlflow.tracking import MlflowClient

from pneumo.config import DataConfig, ExperimentConfig, MlflowConfig
from pneumo.tracking import run_lines, start_run


def test_a_search_links_to_its_trials_and_a_run_to_itself(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = ExperimentConfig(name="links", data=DataConfig(path="unused"), mlflow=MlflowConfig(tracking_uri=uri))
    client = MlflowClient(uri)
    search, single = start_run(client, cfg, "search", "s", params={}), start_run(client, cfg, "train", "t", params={})
    experiment = client.get_run(search).info.experiment_id

    printed = run_lines(client, uri, search).splitlines()
    assert printed[0].split() == ["mlflow", "run:", search]
    assert printed[1].split()[1] == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning"
        f"&searchFilter=tags.%60mlflow.parentRunId%60%20%3D%20%27{search}%27"
    )
    assert printed[2].split() == ["ui:", "mlflow", "ui", "--backend-store-uri", uri]
    assert run_lines(client, uri, single).splitlines()[1].split()[1] == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{single}?workflowType=machine_learning"
    )


def test_a_server_link_drops_the_login_and_needs_no_ui_command(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = ExperimentConfig(name="links", data=DataConfig(path="unused"), mlflow=MlflowConfig(tracking_uri=uri))
    client = MlflowClient(uri)
    run_id = start_run(client, cfg, "train", "t", params={})
    printed = run_lines(client, "https://alice:s3cret@mlflow.example.org", run_id)  # the run read locally
    assert "s3cret" not in printed and "alice" not in printed and "mlflow ui" not in printed
    assert f"https://mlflow.example.org/#/experiments/1/runs/{run_id}?" in printed

"""Data lineage: a run's data is an MLflow dataset input whose digest is pneumo's data fingerprint.
The same files give the same digest in two runs; one changed film gives another."""

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from pneumo.config import DataConfig
from pneumo.data.dataset import prepare_data
from pneumo.data.transforms import Preprocessing
from pneumo.tracking import dataset_digest, log_data_summary

pytestmark = pytest.mark.slow
SPEC = Preprocessing(in_chans=1, image_size=48, mean=(0.5,), std=(0.25,))


def logged_dataset(client: MlflowClient, experiment_id: str, data, source: str, context: str = "training"):
    """A run that logs `data` as pneumo's pipeline does; the dataset input MLflow gives back for it."""
    run_id = client.create_run(experiment_id).info.run_id
    log_data_summary(client, run_id, data, source=source, context=context)
    (logged,) = client.get_run(run_id).inputs.dataset_inputs
    return logged


def test_the_same_files_give_the_same_digest_and_one_changed_film_another(
    ray_session, synthetic_root, tmp_path, mlflow_uri
):
    films = tmp_path / "chest_xray"
    shutil.copytree(synthetic_root, films)
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("lineage")

    first = logged_dataset(client, experiment_id, prepare_data(DataConfig(path=str(films)), SPEC), str(films))
    again = logged_dataset(
        client, experiment_id, prepare_data(DataConfig(path=str(films)), SPEC), str(films), "evaluation"
    )
    assert again.dataset.digest == first.dataset.digest
    assert [(t.key, t.value) for t in again.tags] == [("mlflow.data.context", "evaluation")]

    changed = sorted((films / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    other = sorted((films / "train" / "NORMAL").glob("*.jpeg"))[0]
    changed.write_bytes(other.read_bytes())  # one film's bytes replaced: same name, same count
    data = prepare_data(DataConfig(path=str(films)), SPEC)
    after = logged_dataset(client, experiment_id, data, str(films))
    assert after.dataset.digest != first.dataset.digest
    assert after.dataset.digest == dataset_digest(data.fingerprint) == data.fingerprint[:12]

    profile = json.loads(after.dataset.profile)
    assert profile["fingerprint"] == data.fingerprint and profile["counts"] == data.counts
    assert profile["n_images"] == data.n_images
    assert (after.dataset.name, after.dataset.source_type) == ("chest_xray", "local")
    assert json.loads(after.dataset.source) == {"uri": films.resolve().as_uri()}

"""`pneumo predict` end to end on the session's Ray: a mixed archive with labels through the command
(one row per file, metrics, overlays, CSV, summary.json, the MLflow run), output folders it refuses,
one-line errors, and --resume after the job was killed mid-way."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from pneumo.cli import main
from pneumo.inference.predict import TAG_OUTPUT
from pneumo.tracking import TAG_KIND
from tests.inference.archive import write_archive

pytestmark = pytest.mark.slow


def one_line_exit(argv: list[str]) -> str:
    """The message `pneumo ARGV` exits with: one line, no exception chain."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message and message.startswith("pneumo: "), message
    assert exit_info.value.__cause__ is None and exit_info.value.__suppress_context__
    return message


def settings_for(tmp_path: Path, mlflow_uri: str) -> list[str]:
    return [
        "--config",
        f"mlflow.tracking_uri={mlflow_uri}",
        f"scaling.storage_path={tmp_path / 'results'}",
        "eval.bootstrap_samples=200",
    ]


def test_an_archive_gets_one_row_per_file_with_its_status_labels_metrics_and_overlays(
    ray_session, tiny_model, synthetic_root, tmp_path, mlflow_uri, capfd
):
    expected = write_archive(tmp_path / "archive", synthetic_root)
    out = tmp_path / "scores"
    command = [
        "predict",
        str(tiny_model),
        str(tmp_path / "archive"),
        "--out",
        str(out),
        *settings_for(tmp_path, mlflow_uri),
    ]
    main([*command, "--runtime", "torch", "--part-rows", "5", "--explain", "--csv"])
    terminal = capfd.readouterr().out
    rows = pq.read_table(out / "predictions").to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(str(tmp_path / "archive" / name) for name in expected)
    for row in rows:
        name = str(Path(row["path"]).relative_to(tmp_path / "archive"))
        assert (row["status"], row["true_label"]) == expected[name], name
        assert (row["probability"] is not None) == (row["status"] == "scored") == (row["error"] is None), name
        assert row["sha256"] == hashlib.sha256((tmp_path / "archive" / name).read_bytes()).hexdigest()
        assert (row["model_name"], row["model_version"], row["runtime"], row["threshold"]) == (
            "tiny",
            "local",
            "torch",
            0.5,
        )
        assert (row["explanation"] is not None) == (row["label"] == "PNEUMONIA"), name
        assert row["explanation"] is None or (out / row["explanation"]).read_bytes().startswith(b"\x89PNG")
    assert len(list((out / "predictions").glob("part-*.parquet"))) == 4  # 19 rows, parts of 5
    assert len(pd.read_csv(out / "predictions.csv")) == len(expected)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["status"] == {"refused_ood": 1, "scored": 13, "unreadable": 5}
    assert summary["counts"]["true_label"] == {"NORMAL": 6, "PNEUMONIA": 6, "unknown": 7}
    assert summary["metrics"]["tp"] + summary["metrics"]["fn"] == 6 and summary["this_run"]["films"] == 19
    assert "labelled films metrics (n=12, threshold 0.500)" in terminal and "auroc" in terminal
    assert "19 films in the output: refused_ood 1  scored 13  unreadable 5" in terminal
    assert "19 of 19 films" in terminal and "Traceback" not in terminal

    run = MlflowClient(mlflow_uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags[TAG_KIND] == "predict" and run.data.tags[TAG_OUTPUT] == str(out)
    assert (
        run.data.metrics["n_scored"] == 13 and run.data.metrics["n_unreadable"] == 5 and run.info.status == "FINISHED"
    )
    assert run.data.metrics["labelled_tp"] == summary["metrics"]["tp"]

    # the same folder again: refused without --resume; with it, nothing is left to score
    message = one_line_exit(command)
    assert message == (
        f"pneumo: output error: --out {out} already holds 19 predictions of this model: add --resume to score "
        "only the films not yet in it, or choose another --out"
    )
    main([*command, "--resume", "--runtime", "torch"])
    assert "19 films already scored, 0 to go" in capfd.readouterr().out
    assert len(pd.read_parquet(out / "predictions")) == 19

    # another model's results are never mixed in, --resume or not
    other = tmp_path / "other-model"
    other.mkdir()
    for file in tiny_model.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    for extra in ([], ["--resume"]):
        message = one_line_exit(
            [
                "predict",
                str(other),
                str(tmp_path / "archive"),
                "--out",
                str(out),
                *settings_for(tmp_path, mlflow_uri),
                *extra,
            ]
        )
        assert message.startswith(
            f"pneumo: output error: --out {out} holds 19 predictions of tiny version local ({tiny_model}), "
        )
        assert message.endswith(
            f"not of other-model version local ({other}): one folder holds one model's results; choose another --out"
        )


def test_bad_model_and_data_are_one_line_each(ray_session, tiny_model, tmp_path, mlflow_uri):
    options = ["--out", str(tmp_path / "out"), *settings_for(tmp_path, mlflow_uri)]
    message = one_line_exit(["predict", str(tiny_model), str(tmp_path / "nowhere"), *options])
    assert (
        message == f"pneumo: data error: {tmp_path / 'nowhere'}: no such folder, manifest (.csv, .parquet) or .npz file"
    )
    (tmp_path / "not-a-model").mkdir()
    message = one_line_exit(["predict", str(tmp_path / "not-a-model"), str(tmp_path), *options])
    assert message.startswith("pneumo: model error: ") and "pneumo.json is missing" in message
    (tmp_path / "list.csv").write_text("file\nx.jpeg\n")
    message = one_line_exit(["predict", str(tiny_model), str(tmp_path / "list.csv"), *options])
    assert message == f"pneumo: data error: manifest {tmp_path / 'list.csv'} has no path column (columns: file)"


@pytest.mark.extended  # make test-extended: a job killed mid-way and run again
def test_resume_after_a_kill_scores_every_file_exactly_once(
    ray_session, tiny_model, synthetic_root, tmp_path, mlflow_uri
):
    archive = tmp_path / "archive"
    for film in sorted(synthetic_root.rglob("*.jpeg"))[::2]:  # 200 films
        target = archive / film.relative_to(synthetic_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(film.read_bytes())
    out = tmp_path / "scores"
    command = [
        "predict",
        str(tiny_model),
        str(archive),
        "--out",
        str(out),
        *settings_for(tmp_path, mlflow_uri),
        "--runtime",
        "torch",
        "--part-rows",
        "20",
        "--batch-size",
        "4",
    ]
    killed = subprocess.Popen(
        [sys.executable, "-m", "pneumo.cli", *command],
        env={**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while (
        len(list((out / "predictions").glob("*.parquet"))) < 3 and killed.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    written = pd.read_parquet(out / "predictions")["path"]
    assert 30 <= len(written) < 200, f"killed after {len(written)} films: the job should be cut off mid-way"

    main([*command, "--resume"])
    paths = pd.read_parquet(out / "predictions")["path"]
    assert len(paths) == 200 and paths.is_unique
    assert set(paths) == {str(p) for p in archive.rglob("*.jpeg")}
    assert set(written) <= set(paths)
    assert json.loads((out / "summary.json").read_text())["this_run"]["films"] == 200 - len(written)

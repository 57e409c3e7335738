"""`pneumo` turns every error a user can cause into one line naming what to fix, with no traceback.

Errors raised before Ray starts are fast tests; `pneumo eval` starts Ray before it opens the model or
the data, so its model and data errors are slow tests on the session's Ray.
"""

import subprocess
import sys

import pytest
import torch

from pneumo.cli import main, parse_command
from pneumo.config import ModelConfig
from pneumo.models.checkpoints import CheckpointMeta, save_checkpoint
from pneumo.models.networks import create_model, resolve_preprocessing


def one_line_exit(argv: list[str]) -> str:
    """The message `pneumo ARGV` exits with; it must be one line and hide the exception chain."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message and message.startswith("pneumo: "), message
    assert exit_info.value.__cause__ is None and exit_info.value.__suppress_context__, "the traceback is hidden"
    return message


def test_a_misspelt_config_key_is_a_one_line_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {path: p}\nmodel: {nmae: resnet18}\n")
    message = one_line_exit(["config", "show", str(bad)])
    assert message.startswith("pneumo: config error: ") and "bad.yaml" in message and "model.nmae" in message


def test_a_missing_or_malformed_dataset_is_a_one_line_data_error(tmp_path):
    assert one_line_exit(["data", "inspect", str(tmp_path / "nowhere")]) == (
        f"pneumo: data error: dataset folder not found: {tmp_path / 'nowhere'}"
    )
    (tmp_path / "flat" / "train").mkdir(parents=True)
    message = one_line_exit(["data", "inspect", str(tmp_path / "flat")])
    assert message.startswith("pneumo: data error: ") and "has no test/ folder" in message


def test_the_user_sees_only_the_line_and_exit_status_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {path: p}\ntrain: {epochs: many}\n")
    done = subprocess.run(
        [sys.executable, "-m", "pneumo.cli", "config", "show", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pneumo: config error: "), done.stderr
    assert "train.epochs" in done.stderr and "Traceback" not in done.stderr


def untrained_checkpoint(folder) -> str:
    model_cfg = ModelConfig(name="test_resnet", in_chans=1)
    model = create_model(model_cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=32)
    return str(save_checkpoint(folder, model, CheckpointMeta(model=model_cfg.__dict__, preprocessing=spec.to_dict())))


@pytest.mark.slow
def test_eval_model_and_data_errors_are_one_line(ray_session, smoke_yaml, synthetic_root, tmp_path):
    """A folder that is not a checkpoint, a registry without the model, and a film that does not decode."""
    config = ["--config", str(smoke_yaml)]
    (tmp_path / "not-a-model").mkdir()
    message = one_line_exit(["eval", str(tmp_path / "not-a-model"), str(synthetic_root), *config])
    assert message.startswith("pneumo: model error: ") and "pneumo.json is missing" in message
    message = one_line_exit(["eval", "models:/nope@champion", str(synthetic_root), *config])
    assert message.startswith("pneumo: MLflow error: ") and "nope" in message

    data = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (data / split / label).mkdir(parents=True)
            for film in sorted((synthetic_root / split / label).glob("*.jpeg"))[:3]:
                (data / split / label / film.name).write_bytes(film.read_bytes())
    (data / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not a film")
    torch.manual_seed(0)
    model = untrained_checkpoint(tmp_path / "model")
    message = one_line_exit(["eval", model, str(data), *config, "data.on_bad_file=error"])
    assert message.startswith("pneumo: data error: ") and "broken.jpeg" in message


def test_overrides_may_follow_other_options():
    """`pneumo run x.yaml --resume train.epochs=2`: the same command line again with --resume added."""
    args = parse_command(["run", "x.yaml", "--resume", "train.epochs=2", "--verbose", "train.lr=0.1"])
    assert args.config == ["x.yaml", "train.epochs=2", "train.lr=0.1"] and args.resume and args.verbose
    args = parse_command(["eval", "models:/m@champion", "data", "--verbose", "eval.batch_size=8"])
    assert args.config == ["eval.batch_size=8"]
    with pytest.raises(SystemExit):
        parse_command(["run", "x.yaml", "--resume", "--no-such-option"])
    with pytest.raises(SystemExit):
        parse_command(["data", "inspect", "folder", "train.epochs=2"])  # a command without overrides

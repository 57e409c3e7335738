"""The README and the guides are tested: every command in them runs here, or is checked against the
tool that would run it.

The checked pages are README.md, the tutorials and how-to guides of the documentation site (in the
order of mkdocs.yml's navigation) and bench/README.md (tests/readme_blocks.py reads their fenced
blocks). Fast tests check every command with its tool's own parser (tests/readme_cli.py): a command or
option that does not exist fails. Slow tests run every command that can run on this machine, in page
order, in a scratch copy of the checkout (tests/readme_runner.py says exactly what the harness changes:
sizes, ports, scratch HOME, and `ray stop` stopping only its own Ray), and compare the outputs the pages
show in shape. Commands that need a cloud (CLOUD_SUBCOMMANDS, CLOUD_MARKS, or a block with one) or a
GPU (gpu_reason) are parsed only. A block marked `<!-- readme-test: illustrative -->` is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Optional

import pytest
import yaml
from conftest import QUICKSTART, REPO
from readme_blocks import Block, Command, commands, json_shape, missing_lines, read_blocks, shape_pattern
from readme_cli import CommandRejected, check_command

GUIDE_SECTIONS = ("tutorials/", "how-to/")  # the site's pages a reader copies commands from


def nav_pages(nav) -> list[str]:
    """Every page of a mkdocs navigation, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def guide_pages() -> list:
    """The tutorials and how-to guides, in the order of mkdocs.yml's navigation (`mkdocs build --strict`
    fails on a page left out of it, so none is missed here)."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [REPO / "docs" / page for page in nav_pages(nav) if page.startswith(GUIDE_SECTIONS)]


READMES = (REPO / "README.md", *guide_pages(), REPO / "bench" / "README.md")
BLOCKS = [block for readme in READMES for block in read_blocks(readme)]
CHECKED = [block for block in BLOCKS if not block.illustrative and block.language in ("bash", "sh", "console")]
COMMANDS = [command for block in CHECKED for command in commands(block)]
CLOUD_SUBCOMMANDS = {"up", "down", "exec", "attach", "dashboard", "rsync-up", "rsync-down", "submit", "get-head-ip"}
CLOUD_MARKS = ("s3://", "gs://", "az://", "abfss://", "<head-private-ip>", "YOUR-BUCKET")
CLUSTER_TOOLS = re.compile(
    r"(?:^|[\s(])(kubectl|helm|docker|buildah)\s"
)  # a Kubernetes cluster, a registry, an image build
# `make test` runs this very file; `make demo` is `make install` plus the quickstart command, which runs here.
NOT_RUN_HERE = {
    "make test": "runs the whole suite, this test included",
    "make demo": "installs, then runs "
    "`pneumo run experiments/quickstart.yaml`, which the README's quickstart output block runs",
    "make test-readme": "runs these steps, this one included",
    "make docs": "serves the site until stopped; make docs-build and tests/docs build the same site",
}


def cloud_reason(command: Command) -> Optional[str]:
    """Why `command` cannot run on this machine (it needs a cluster launcher or an object store), or None."""
    if command.argv[:1] == ("ray",) and len(command.argv) > 1 and command.argv[1] in CLOUD_SUBCOMMANDS:
        return f"`ray {command.argv[1]}` needs a cluster launched from cluster.yaml"
    mark = next((mark for mark in CLOUD_MARKS if mark in command.text), None)
    if mark:
        return f"names a cloud resource ({mark})"
    tool = CLUSTER_TOOLS.search(command.text)
    if tool:
        return f"`{tool.group(1)}` needs a Kubernetes cluster, a container registry or an image build"
    return None


GPU_EXPERIMENTS = ("experiments/kaggle-resnet50.yaml", "experiments/kaggle-search.yaml", "experiments/rsna-dicom.yaml")


def gpu_reason(command: Command) -> Optional[str]:
    """Why `command` needs a GPU (this machine has none), or None: it asks for GPU workers, names a GPU
    recipe without turning the GPUs off, or is the GPU check without --smoke."""
    text = command.text
    if "scaling.use_gpu=true" in text:
        return "asks for GPU workers (scaling.use_gpu=true)"
    recipe = next((name for name in GPU_EXPERIMENTS if name in text), None)
    if recipe and "scaling.use_gpu=false" not in text:
        return f"{recipe} trains on GPU workers"
    if command.argv[:3] == ("python", "-m", "bench.gpu_check") and "--smoke" not in command.argv:
        return "the GPU check needs GPUs (--smoke runs it on CPU)"
    return None


def not_run_reason(command: Command) -> Optional[str]:
    """Why `command` is parsed and not run: its own cloud or GPU reason, or the cloud reason of a
    command in its block (the block is a walk-through on a cluster)."""
    reason = cloud_reason(command) or gpu_reason(command) or NOT_RUN_HERE.get(command.text)
    if reason:
        return reason
    cluster = next((other for other in commands(command.block) if cloud_reason(other)), None)
    if cluster is not None and command.block.language != "console":
        return f"a step of a walk-through on a cluster ({cluster.where}: {cloud_reason(cluster)})"
    return None


def ids(items) -> list[str]:
    """`FILE:LINE: what`, so that `-k "README.md:433:"` picks one (the colon ends the line number)."""
    return [f"{item.where}: {item.language if isinstance(item, Block) else item.text[:60]}" for item in items]


# ---- fast: reading the README and parsing every command ---------------------------------------------


def test_readmes_have_blocks_and_few_are_illustrative():
    illustrative = [block.where for block in BLOCKS if block.illustrative]
    print(
        f"{len(BLOCKS)} fenced blocks, {len(COMMANDS)} commands; {len(illustrative)} illustrative (skipped): "
        f"{illustrative}"
    )
    assert len(COMMANDS) >= 30 and any(block.language == "python" for block in BLOCKS)
    assert len(illustrative) <= len(BLOCKS) // 5, f"too many blocks marked illustrative: {illustrative}"


@pytest.mark.parametrize("block", BLOCKS, ids=ids(BLOCKS))
def test_block_is_checked_unless_illustrative(block: Block):
    """Every block is something the harness checks; an illustrative one is listed as skipped."""
    if block.illustrative:
        pytest.skip(f"illustrative: {block.where}")
    checked_languages = ("bash", "sh", "console", "python", "yaml", "text", "")  # text: shown, not run
    assert block.language in checked_languages, f"{block.where}: the README test does not know ```{block.language}"
    if block.language in ("bash", "sh", "console"):
        assert commands(block), f"{block.where}: a shell block without a command"


@pytest.mark.parametrize("command", COMMANDS, ids=ids(COMMANDS))
def test_command_is_accepted_by_its_tool(command: Command, monkeypatch):
    monkeypatch.chdir(REPO)
    check_command(command.argv)


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (("ray", "attach", "cluster.yaml", "--", "ray", "get-auth-token"), "unexpected extra arguments"),
        (("ray", "attach", "cluster.yaml", "--", "serve", "deploy", "serve_config.yaml"), "unexpected extra arguments"),
        (("ray", "exec", "cluster.yaml", "serve deploy --no-such-option x.yaml"), "no such option"),
        (("ray", "job", "submit", "--", "pneumo", "fly"), "invalid choice"),
        (("pneumo", "eval", "runs:/<run", "id>/model", "data/x"), "unrecognized arguments"),
        (("curl", "--no-such-curl-option", "http://127.0.0.1"), "unknown options"),
        (("make", "no-such-target"), "no-such-target"),
        (("python", "-m", "bench.data_bench", "--films", "9"), "unrecognized arguments"),
        (("python", "-c", "from mlflow import (MlflowClient"), "python -c"),
    ],
)
def test_wrong_commands_are_rejected(argv, complaint, monkeypatch):
    """The parse check can fail: cluster commands that pass a command where the launcher takes none,
    and other made-up ones."""
    monkeypatch.chdir(REPO)
    with pytest.raises(CommandRejected, match=f"(?i){complaint}"):
        check_command(argv)


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.language == "yaml" and not b.illustrative],
    ids=ids([b for b in BLOCKS if b.language == "yaml" and not b.illustrative]),
)
def test_yaml_block_is_a_valid_experiment_diff(block: Block, tmp_path):
    """A fragment merges over the quickstart; a whole file (one with `name:` or its own `base:`) loads
    as it is, its `base:` read from experiments/ as a file saved there would. A block none of whose
    keys is an experiment section (a fragment of cluster.yaml, a manifest) must only be valid YAML."""
    from pneumo.config import ExperimentConfig, load_config

    sections = {field.name for field in dataclasses.fields(ExperimentConfig)} | {"base"}
    keys = set(yaml.safe_load(block.text) or {})
    if not keys & sections:
        return
    text = re.sub(r"^base:\s*(\S+)", lambda m: f"base: {REPO / 'experiments' / m.group(1)}", block.text, flags=re.M)
    whole = re.search(r"^(name|base):", block.text, re.M) is not None
    diff = tmp_path / "diff.yaml"
    diff.write_text(text if whole and "base:" in text else f"base: {QUICKSTART}\n{text}\n")
    load_config([diff])


SAVED_AS = re.compile(r"#\s*(experiments/\S+\.yaml)\s*$", re.M)  # a yaml block's first line naming its file
SHOWN_FILES = [
    b for b in BLOCKS if b.language == "yaml" and (m := SAVED_AS.match(b.text)) and (REPO / m.group(1)).exists()
]


@pytest.mark.parametrize("block", SHOWN_FILES, ids=ids(SHOWN_FILES))
def test_a_shown_experiment_file_is_the_repository_file(block: Block):
    """A block that names a file of experiments/ shows it as it is (one the checkout lacks is a file the
    page asks the reader to write, and the runner saves it)."""
    name = SAVED_AS.match(block.text).group(1)
    assert yaml.safe_load(block.text) == yaml.safe_load((REPO / name).read_text()), f"{block.where} differs from {name}"


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "python"], ids=ids([b for b in BLOCKS if b.language == "python"])
)
def test_python_block_compiles(block: Block):
    compile(block.text, block.where, "exec")


def test_shapes_match_values_not_words():
    assert shape_pattern("test metrics (n=174, threshold 0.xxx)").fullmatch("test metrics (n=30, threshold 0.412)")
    assert (
        shape_pattern("results:      results/quickstart-search-YYYYmmdd-HHMMSS").fullmatch(
            "results: /a/results/quickstart-search-20261130-011502"
        )
        is None
    ), "a relative path is not an absolute one"
    assert shape_pattern("mlflow run:   <run id>  (mlflow ui …)").fullmatch("mlflow run: 0af3  (mlflow ui x y)")
    assert not shape_pattern("train        268        701").fullmatch("train  268  701  385")
    assert missing_lines(("a 1", "b 2"), "x\na 10\nb 3\n") == []
    assert missing_lines(("b 2", "a 1"), "a 10\nb 3\n") == ["a 1"], "in order"
    assert json_shape({"p": 0.9, "label": "X", "v": "1"}) == json_shape({"p": 1, "label": "Y", "v": "7"})
    assert json_shape({"p": 0.9}) != json_shape({"p": "0.9"})


def test_cluster_commands_are_parsed_not_run():
    reasons = {command.where: not_run_reason(command) for command in COMMANDS if not_run_reason(command)}
    assert any("ray up" in reason for reason in reasons.values()), reasons
    assert not any(command.argv[:2] == ("ray", "attach") and "--" in command.argv for command in COMMANDS)


def test_cluster_tools_are_checked_by_subcommand_and_parsed_not_run():
    check_command(("kubectl", "-n", "pneumo", "rollout", "status", "deployment/mlflow"))
    check_command(("CLUSTER=$(kubectl", "-n", "x", "get", "rayjob", "y", "-o", "jsonpath={.status})"))
    check_command(("helm", "repo", "update"))
    with pytest.raises(CommandRejected, match="kubectl: unknown command 'rollot'"):
        check_command(("kubectl", "-n", "pneumo", "rollot", "status", "deployment/mlflow"))
    with pytest.raises(CommandRejected, match="kubectl: unknown command 'gte'"):
        check_command(("TOKEN=$(kubectl", "gte", "secret", "s)"))
    line = "kubectl -n pneumo port-forward svc/mlflow 5000:5000"
    assert "kubectl" in cloud_reason(
        Command(Block(REPO / "README.md", 1, "bash", line, False), 2, line, tuple(shlex.split(line)))
    )


def test_gpu_commands_are_parsed_not_run():
    def reason(line: str) -> Optional[str]:
        return gpu_reason(Command(Block(REPO / "README.md", 1, "bash", line, False), 2, line, tuple(shlex.split(line))))

    assert "use_gpu" in reason("pneumo run experiments/my.yaml scaling.use_gpu=true")
    assert "kaggle-resnet50" in reason("pneumo run experiments/kaggle-resnet50.yaml data.path=/x")
    assert reason("pneumo run experiments/kaggle-resnet50.yaml scaling.use_gpu=false") is None
    assert "--smoke" in reason("python -m bench.gpu_check")
    assert reason("python -m bench.gpu_check --smoke") is None
    assert reason("pneumo run experiments/quickstart.yaml") is None


def test_guides_are_checked_in_navigation_order():
    names = [readme.relative_to(REPO).as_posix() for readme in READMES]
    assert names[0] == "README.md" and names[-1] == "bench/README.md", names
    assert "docs/tutorials/quickstart.md" in names and "docs/how-to/ray-cluster.md" in names, names
    assert names.index("docs/tutorials/quickstart.md") < names.index("docs/how-to/ray-cluster.md")
    on_disk = {
        p.relative_to(REPO).as_posix() for section in GUIDE_SECTIONS for p in (REPO / "docs" / section).glob("*.md")
    }
    assert on_disk <= set(names), f"guides missing from mkdocs.yml's nav: {sorted(on_disk - set(names))}"


# ---- slow: running what can run here ----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing the slow test runs: a command, or a Python block as written."""

    block: Block
    command: Optional[Command]

    @property
    def where(self) -> str:
        return self.command.where if self.command else self.block.where

    @property
    def text(self) -> str:
        return self.command.text if self.command else "python block"


STEPS = [
    Step(block, command)
    for block in BLOCKS
    if not block.illustrative
    for command in (commands(block) if block.language != "python" else [None])
    if block.language == "python" or command is not None and not_run_reason(command) is None
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    from readme_runner import Scratch, write_props

    world = Scratch.create(tmp_path_factory.mktemp("readme"))
    write_props(world, BLOCKS)
    yield world
    world.close()


def run_python_block(scratch, block: Block) -> subprocess.CompletedProcess:
    script = scratch.root.parent / f"block_{block.line}.py"
    script.write_text(block.text)
    env = {**scratch.env, "RAY_TMPDIR": scratch.new_ray_tmpdir()}
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), str(script)],
        cwd=scratch.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def builds_on_the_quickstart(step: Step) -> bool:
    """Steps that use the model the first `pneumo run` registers (served, evaluated, loaded, asked over
    HTTP, or named by a placeholder that run fills in)."""
    from readme_runner import QUICKSTART_PLACEHOLDERS

    if step.command is None:
        return "models:/" in step.block.text
    served = step.command.program == "curl" and "8265" not in step.command.text  # 8265: the Ray dashboard
    named = any(name in step.command.text for name in (*QUICKSTART_PLACEHOLDERS, "models:/"))
    return served or named or step.command.argv[:2] in (("pneumo", "eval"), ("pneumo", "serve"))


def expects_failure(command: Command) -> bool:
    """A console block that shows an error message, or a JSON answer with an `error` key (an HTTP
    refusal), shows a command that exits non-zero."""
    refusal = isinstance(command.expected_json, dict) and "error" in command.expected_json
    return refusal or any(" error: " in line or line.startswith("error:") for line in command.expected_output)


def answer_of(output: str):
    """The JSON answer a command printed first (curl adds its own error line after a refusal's body)."""
    return json.JSONDecoder().raw_decode(output.lstrip())[0]


SERVED_URL = re.compile(r"(?:127\.0\.0\.1|HOST):(\d+)")


def prerequisites(step: Step) -> list[Step]:
    """The earlier steps `step` builds on, in README order, so that `-k` can run it alone: the reader's
    `source` lines, the first `pneumo run` (for a step that uses its model), the earlier steps of its
    block, the same command shown earlier (a console excerpt repeats a walk-through's line), and for a
    `curl` the last server started on its port before it; each with what it builds on.
    In a whole run they have all run already (the scratch copy runs a command once)."""
    from readme_runner import server_port

    earlier = STEPS[: STEPS.index(step)]
    needed = [s for s in earlier if s.command and s.command.program in ("source", ".")]
    needed += [s for s in earlier if s.block == step.block]
    needed += [s for s in earlier if s.command and step.command and s.command.text == step.command.text]
    if builds_on_the_quickstart(step):
        needed += [s for s in earlier if s.command and s.command.argv[:2] == ("pneumo", "run")][:1]
    asked = SERVED_URL.search(step.command.text) if step.command and step.command.program == "curl" else None
    if asked:
        on_port = [s for s in earlier if s.command and server_port(s.command.argv) == int(asked.group(1))]
        needed += on_port[-1:]
    closure = {s.where: s for s in needed}
    for s in needed:
        closure.update({p.where: p for p in prerequisites(s)})
    ordered = sorted(closure.values(), key=STEPS.index)
    return [s for n, s in enumerate(ordered) if not superseded(s, ordered[n + 1 :] + [step])]


def superseded(step: Step, later: list[Step]) -> bool:
    """A server whose README port a later server takes over (it would only be started to be stopped)."""
    from readme_runner import server_port

    port = server_port(step.command.argv) if step.command else None
    return port is not None and any(s.command and server_port(s.command.argv) == port for s in later)


@pytest.mark.slow
@pytest.mark.readme
@pytest.mark.timeout(900)
@pytest.mark.parametrize("step", STEPS, ids=ids(STEPS))
def test_readme_step_runs(step: Step, scratch):
    first_run = next((o for o in scratch.outputs.values() if o.command.startswith("pneumo run")), None)
    if first_run is not None and first_run.returncode and builds_on_the_quickstart(step):
        pytest.fail(
            f"{step.where}: needs the model the quickstart registers, and `{first_run.command}` failed "
            f"(exit {first_run.returncode}):\n{first_run.output[-1500:]}"
        )
    for needed in prerequisites(step):  # nothing runs again in a whole run; a step picked with -k needs them
        if needed.command is not None:
            scratch.run(needed.command)
    if step.command is None:
        done = run_python_block(scratch, step.block)
        assert done.returncode == 0, (
            f"{step.where}: the Python block failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return
    command = step.command
    outcome = scratch.run(command)
    runs_failed = [o.command for o in scratch.outputs.values() if o.command.startswith("pneumo run") and o.returncode]
    shown = f"{command.where}: `{outcome.command}` exited {outcome.returncode}:\n{outcome.output[-4000:]}" + (
        f"\n(what it builds on failed earlier: {runs_failed})"
        if runs_failed and outcome is not scratch.outputs.get(runs_failed[0])
        else ""
    )
    if expects_failure(command):
        assert outcome.returncode not in (0, -1), shown
    else:
        assert outcome.returncode == 0, shown
    missing = missing_lines(command.expected_output, outcome.output)
    assert not missing, (
        f"{command.where}: lines the README shows that `{outcome.command}` no longer prints "
        f"(in shape): {missing}\n--- it printed:\n{outcome.output[-4000:]}"
    )
    if command.expected_json is not None:
        answer = answer_of(outcome.output)
        assert json_shape(answer) == json_shape(command.expected_json), f"{command.where}: {answer}"


def test_json_answers_span_comment_lines_and_an_error_is_a_refusal():
    text = 'curl http://x/predict\n# {"p": 1,\n#  "label": "X"}\ncurl http://x/bad  # refused\n# {"error": "no", "field": "body"}'
    answered, refused = commands(Block(REPO / "README.md", 1, "bash", text, False))
    assert answered.expected_json == {"p": 1, "label": "X"} and not expects_failure(answered)
    assert refused.expected_json == {"error": "no", "field": "body"} and expects_failure(refused)
    assert answer_of('{"error": "no"}curl: (22) The requested URL returned error: 422\n') == {"error": "no"}


def test_a_step_picked_alone_runs_what_it_builds_on():
    challenger = next(s for s in STEPS if s.command and "X-Model-Version: challenger" in s.command.text)
    before = [s.text for s in prerequisites(challenger)]
    assert before[0] == "source .venv/bin/activate", before
    assert any(text.startswith("pneumo run experiments/quickstart.yaml") for text in before), before
    assert any("set_registered_model_alias" in text for text in before), "the earlier steps of its block"
    assert before[-1].startswith("pneumo serve") and "serve.shadow=true" in before[-1], "the last server on its port"
    assert sum(text.startswith("pneumo serve") for text in before) == 1, (
        "servers replaced on their port are not started"
    )
    logs = next(s for s in STEPS if s.command and s.command.argv[:3] == ("ray", "job", "logs"))
    walk_through = [s.text for s in prerequisites(logs)]
    assert "ray start --head" in walk_through and any(t.startswith("ray job submit") for t in walk_through), (
        walk_through
    )
    assert not any(t.startswith("pneumo serve") for t in walk_through), "no server: it asks the Ray head"
    excerpt = next(s for s in STEPS if s.command and s.command.expected_output and s.command.program == "ray")
    assert "ray start --head" in [s.text for s in prerequisites(excerpt)], "a console excerpt of a walk-through line"


def test_harness_changes_only_sizes_ports_and_placeholders(tmp_path):
    """What runs is the README's line plus the documented mapping (tests/readme_runner.py), nothing else."""
    from readme_runner import RUN_SIZES, Scratch

    scratch = Scratch(
        tmp_path, tmp_path, {}, ports={8000: 41000, 8080: 41001, 8265: 41002, 5000: 41003}, values={"RUN_ID": "abc123"}
    )
    block = Block(REPO / "README.md", 1, "bash", "", False)

    def mapped(line: str) -> str:
        return scratch.mapped(Command(block, 2, line, tuple(shlex.split(line))))

    assert mapped(
        "pneumo run experiments/quickstart.yaml train.lr=3e-4"
    ) == "pneumo run experiments/quickstart.yaml train.lr=3e-4 " + " ".join(RUN_SIZES)
    assert mapped("pneumo serve runs:/RUN_ID/model --port 8080") == "pneumo serve runs:/abc123/model --port 41001"
    assert mapped("pneumo serve") == "pneumo serve --port 41000"
    assert mapped("pneumo serve --host 0.0.0.0") == "pneumo serve --host 127.0.0.1 --port 41000"
    assert mapped("curl http://HOST:8000/predict").endswith(" http://127.0.0.1:41000/predict")
    assert (
        mapped("curl -F file=@film.jpeg http://127.0.0.1:8000/predict")
        == "curl --silent --show-error --fail-with-body -F file=@film.jpeg http://127.0.0.1:41000/predict"
    )
    assert (
        mapped("python -m bench.serve_bench --duration-s 20 --concurrency 1 8 32")
        == "python -m bench.serve_bench --duration-s 1 --concurrency 1 --image-size 48"
    )
    assert mapped("python -m bench.maps_bench --other-seeds 1 2 3 4") == (
        "python -m bench.maps_bench --other-seeds 1 --target 0 --override " + " ".join(RUN_SIZES)
    ), "several config overrides: one option, its values in turn"
    assert mapped("pneumo data inspect data/synthetic-chest-xray") == "pneumo data inspect data/synthetic-chest-xray"
    assert mapped("ray job logs SUBMISSION_ID") == "ray job logs SUBMISSION_ID", "unknown until a job was submitted"

"""Run the commands of the README and the guides as a user would, in a scratch copy of this checkout,
kept small and isolated.

The command line that runs is the page's; the harness changes only what this mapping says:

- sizes: `pneumo run` gets RUN_SIZES appended (48 px films, a small synthetic set, 2 epochs,
  a 2-trial search, no hub weights: the harness has no internet); a benchmark gets BENCH_SIZES (its
  size options set small); nothing else.
- files a user has and a fresh checkout does not (PROPS): `film.jpeg`, `a.jpeg`, `b.png` (films of the
  synthetic set), `film.dcm` (`film.jpeg` as a 16-bit DICOM, written by bench/films.py), `ct.dcm`
  (pydicom's own CT test file), `data/chest_xray` and `data/other-hospital` (small synthetic sets),
  `experiments/x.yaml` (the misspelled key the README shows), and every ```yaml block whose first
  line is a comment naming a file under experiments/ (`# experiments/my-kaggle.yaml`): the page tells
  the reader to save it there.
- placeholders: RUN_ID (the MLflow run the first `pneumo run` printed), SUBMISSION_ID (the job id
  `ray job submit` printed), `results/<run>/best_model` and `results/quickstart-search-…/best_model`
  (the best model that run printed).
- isolation: HOME is a scratch folder (so ~/.ray/auth_token and ~/.pneumo are the test's own); every
  `pneumo` command starts its Ray under its own RAY_TMPDIR, `ray` commands of one block share one;
  the README's ports (8000, 8080 for Serve, 8265 for the dashboard, 5000 for MLflow) become free
  ports and `HOST` 127.0.0.1; a server's `--host 0.0.0.0` is 127.0.0.1 (tests use loopback only);
  `ray start --head` gets free ports for its other services; `source .venv/bin/activate` is
  the project's virtualenv.
- `ray stop` stops every Ray on a machine, other people's tests included: here it stops only the
  Ray processes of its block (those whose command line names the block's RAY_TMPDIR). A `ray start`
  first stops the heads other blocks started (one head per machine, as a reader who follows two
  pages has). `ray` commands act on their block's Ray, so each block runs its own (a console excerpt
  shows the output of the same line run last).
- servers (`pneumo serve`, `mlflow ui`) run in the background until ready (/readyz or / answers 200,
  and every model role on /versions has stopped loading); each stays up until another claims its
  README port or the scratch copy is closed. `curl` gets `--silent --show-error --fail-with-body`, so
  an HTTP error fails the command.
- the code: PYTHONPATH is the scratch copy, so every process (Ray workers included: they import from
  the driver's working directory) runs the copy's pneumo, as with the copy installed editable.
- `source FILE` changes the environment of every later command (the reader's setup: the virtualenv);
  `export K=V` that of the later commands of its own block (a recipe's setting, such as a serve token,
  does not leak into the next recipe).
- outputs are compared as a terminal shows them: ANSI colour codes are removed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import requests
from conftest import stop_ray_under, until_agent_up
from readme_blocks import Block, Command

from pneumo.cli.ray_start import free_local_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
from conftest import TEST_ENVIRONMENT as QUIET  # noqa: E402

RUN_SIZES = (
    "data.image_size=48",
    "data.synth.n_images=300",
    "data.synth.image_size=64",
    "train.epochs=2",
    "train.batch_size=16",
    "tune.num_samples=2",
    "tune.grace_period=1",
    "model.pretrained=false",
)
BENCH_SIZES = {  # module -> options set (replaced when the README gives them, else appended)
    "bench.train_bench": {"--image-size": "48", "--images": "96", "--epochs": "2"},
    "bench.overhead_bench": {"--repeats": "1", "--epochs": "1"},
    "bench.data_bench": {"--n": "64", "--full-size-n": "20", "--passes": "2"},  # 20: the fewest with a test/ split
    "bench.serve_bench": {"--duration-s": "1", "--concurrency": "1", "--image-size": "48"},
    "bench.monitoring_bench": {"--fresh": "250", "--shifted": "250", "--null-windows": "3", "--shift-windows": "2"},
    # the quickstart at RUN_SIZES cannot localize: its figures are shown, the target is not judged
    "bench.maps_bench": {"--other-seeds": "1", "--target": "0", "--override": " ".join(RUN_SIZES)},
}
README_PORTS = (8000, 8080, 8265, 5000)
SERVER_PROGRAMS = {("pneumo", "serve"): 8000, ("mlflow", "ui"): 5000}  # long-running command -> README port
QUICKSTART_PLACEHOLDERS = ("RUN_ID", "results/<run>/best_model", "results/quickstart-search-…/best_model")
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour and cursor codes a terminal interprets
TIMEOUT_S = {"pneumo": 600, "ray": 600, "python": 600}  # per command; anything else 120 s


def server_port(argv: tuple[str, ...]) -> Optional[int]:
    """The README port of a long-running server command (its --port, else its program's), or None."""
    if tuple(argv[:2]) not in SERVER_PROGRAMS:
        return None
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else SERVER_PROGRAMS[tuple(argv[:2])]


@dataclass
class Outcome:
    command: str  # what ran
    returncode: int
    output: str  # stdout + stderr


@dataclass
class Server:
    readme_port: int
    process: subprocess.Popen
    ray_tmpdir: str
    log: Path
    line: str  # the command line that started it


def copy_checkout(target: Path) -> None:
    """The working tree as git sees it (tracked and untracked, minus ignored): what a fresh clone has."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@dataclass
class Scratch:
    """A scratch copy of the checkout where README commands run, with the state they leave behind."""

    root: Path
    home: Path
    env: dict[str, str]  # the reader's shell: what `source` and `export` change
    ports: dict[int, int] = field(default_factory=dict)  # README port -> the port used here
    values: dict[str, str] = field(default_factory=dict)  # placeholder -> value
    outputs: dict[str, Outcome] = field(default_factory=dict)  # command run -> its outcome (run once)
    servers: dict[int, Server] = field(default_factory=dict)  # README port -> server
    block_tmpdir: dict[str, str] = field(default_factory=dict)  # block (file:line) -> RAY_TMPDIR of its `ray` commands
    block_exports: dict[str, dict[str, str]] = field(default_factory=dict)  # block (file:line) -> what it exported
    head_ports: dict[str, list[int]] = field(default_factory=dict)  # `ray start` (file:line) -> its other ports
    heads: dict[str, str] = field(default_factory=dict)  # block (file:line) that started a Ray head -> its RAY_TMPDIR
    block_outputs: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # (block, line) -> a `ray` outcome
    env_changed: dict[str, Outcome] = field(default_factory=dict)  # `source`/`export` (file:line) -> its outcome
    tmpdirs: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, base: Path) -> Scratch:
        root, home = base / "checkout", base / "home"
        root.mkdir()
        home.mkdir()
        copy_checkout(root)
        env = {**os.environ, **QUIET, "HOME": str(home), "PYTHONPATH": str(root)}
        for inherited in (
            "RAY_ADDRESS",
            "RAY_API_SERVER_ADDRESS",
            "MLFLOW_TRACKING_URI",
            "PNEUMO_HOME",
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "VIRTUAL_ENV",
        ):
            env.pop(inherited, None)
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
        scratch = cls(root, home, env, ports={port: free_local_port() for port in README_PORTS})
        return scratch

    def new_ray_tmpdir(self) -> str:
        tmpdir = tempfile.mkdtemp(prefix="rdm", dir="/tmp")  # short: Ray's socket paths live under it
        self.tmpdirs.append(tmpdir)
        return tmpdir

    # ---- what a command line becomes here -------------------------------------------------------
    def substitute(self, text: str) -> str:
        text = text.replace("--host 0.0.0.0", "--host 127.0.0.1")  # tests reach servers on loopback only
        for readme_port, port in self.ports.items():
            text = re.sub(rf"(127\.0\.0\.1|HOST):{readme_port}\b", f"127.0.0.1:{port}", text)
        text = text.replace("source .venv/bin/activate", f"source {VENV_BIN / 'activate'}")
        for placeholder, value in self.values.items():
            text = text.replace(placeholder, value)
        return text

    def mapped(self, command: Command) -> str:
        """The shell line that runs for `command` (see the module docstring)."""
        text, argv = self.substitute(command.text), command.argv
        head = tuple(argv[:2])
        extra: list[str] = []
        if head == ("pneumo", "run") or argv[:3] == ("ray", "job", "submit") and "pneumo" in argv:
            extra += RUN_SIZES
        readme_port = server_port(argv)
        if readme_port is not None:
            text = re.sub(r"\s--port[ =]\d+", "", text)
            extra += ["--port", str(self.ports[readme_port])]
        if head == ("ray", "start"):  # the same ports each time it is mapped: the line names one command
            gcs, client = self.head_ports.setdefault(command.where, [free_local_port() for _ in range(2)])
            extra += [
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                f"--dashboard-port={self.ports[8265]}",
                "--dashboard-host=127.0.0.1",
                "--dashboard-agent-listen-port=0",  # the agent's own pick: a probed port can be taken
                "--metrics-export-port=0",  # before it binds, and then it never takes jobs
                f"--ray-client-server-port={client}",
            ]
        if argv[0] == "curl":
            text = text.replace("curl ", "curl --silent --show-error --fail-with-body ", 1)
        if argv[0] == "python" and len(argv) > 2 and argv[2] in BENCH_SIZES:
            for option, value in BENCH_SIZES[argv[2]].items():
                pattern = rf"\s{re.escape(option)}((\s+[^-\s]\S*)+)"
                if re.search(pattern, text):
                    text = re.sub(pattern, f" {option} {value}", text)
                else:
                    extra += [option, *value.split()]
        return f"{text} {shlex.join(extra)}".strip()

    def command_env(self, command: Command) -> dict[str, str]:
        if command.block.where not in self.block_tmpdir:
            self.block_tmpdir[command.block.where] = self.new_ray_tmpdir()
        fresh = command.program == "pneumo"
        return {
            **self.env,
            **self.block_exports.get(command.block.where, {}),
            "RAY_TMPDIR": self.new_ray_tmpdir() if fresh else self.block_tmpdir[command.block.where],
        }

    # ---- running ------------------------------------------------------------------------------
    def run(self, command: Command) -> Outcome:
        """Run `command` (once: a second README mention reuses the outcome) and learn what it printed."""
        line = self.mapped(command)
        readme_port = server_port(command.argv)
        if readme_port is not None:  # started again when another server took its port meanwhile
            current = self.servers.get(readme_port)
            if current is not None and current.line == line and current.process.poll() is None:
                return self.outputs[line]
            return self._start_server(readme_port, line, self.command_env(command))
        per_block = command.program == "ray" and command.block.language != "console"
        if per_block and (command.block.where, line) in self.block_outputs:
            return self.block_outputs[(command.block.where, line)]
        if not per_block and line in self.outputs:
            return self.outputs[line]
        env = self.command_env(command)
        if command.program in ("export", "source", "."):
            if command.where not in self.env_changed:  # once each: `source` again would stack PATH entries
                self.env_changed[command.where] = self._change_env(command, env, line)
            return self.env_changed[command.where]
        if command.text.strip() == "ray stop":
            self.heads.pop(command.block.where, None)
            stop_ray_under(env["RAY_TMPDIR"])
            return Outcome(line, 0, f"stopped the Ray under {env['RAY_TMPDIR']}")
        if command.argv[:2] == ("ray", "start"):
            self._stop_other_heads(command.block.where)
            self.heads[command.block.where] = env["RAY_TMPDIR"]
        outcome = until_agent_up(lambda: self._run_once(command, line, env), lambda done: done.output)
        self._learn(command, outcome)
        self.outputs[line] = outcome
        if per_block:
            self.block_outputs[(command.block.where, line)] = outcome
        with (self.root.parent / "outcomes.log").open("a") as log:  # read while a long run is still going
            log.write(f"=== {command.where} exit {outcome.returncode}: {line}\n{outcome.output[-3000:]}\n")
        return outcome

    def _stop_other_heads(self, block: str) -> None:
        for other in [where for where in self.heads if where != block]:
            stop_ray_under(self.heads.pop(other))

    def _run_once(self, command: Command, line: str, env: dict[str, str]) -> Outcome:
        timeout = TIMEOUT_S.get(command.program, 120)
        try:
            done = subprocess.run(
                ["bash", "-c", line], cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
            )
            return Outcome(line, done.returncode, ANSI_CODE.sub("", done.stdout + done.stderr))
        except subprocess.TimeoutExpired as expired:
            return Outcome(line, -1, f"timed out after {timeout} s\n{expired.stdout or ''}{expired.stderr or ''}")

    def _change_env(self, command: Command, env: dict[str, str], line: str) -> Outcome:
        """`source`: every later command sees the change; `export`: the later commands of its block."""
        done = subprocess.run(
            ["bash", "-c", f"{line} && env -0"], cwd=self.root, env=env, capture_output=True, text=True, timeout=30
        )
        if done.returncode == 0:
            changed = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
            changed.pop("RAY_TMPDIR")
            if command.program == "export":
                exported = {key: value for key, value in changed.items() if env.get(key) != value}
                self.block_exports.setdefault(command.block.where, {}).update(exported)
            else:
                self.env = changed
        return Outcome(line, done.returncode, done.stderr)

    def _start_server(self, readme_port: int, line: str, env: dict[str, str]) -> Outcome:
        if readme_port in self.servers:
            self.stop_server(readme_port)
        log = self.root.parent / f"server-{readme_port}-{len(self.outputs)}.log"
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.root,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(readme_port, process, env["RAY_TMPDIR"], log, line)
        self.servers[readme_port] = server
        url = f"http://127.0.0.1:{self.ports[readme_port]}"
        ready_path = "/readyz" if line.startswith("pneumo") else "/"
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = requests.get(url + ready_path, timeout=5).status_code
                if status == 200 and (ready_path == "/" or not self._roles_loading(url)):
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        ready = status == 200
        outcome = Outcome(
            line,
            0 if ready else 1,
            ("ready\n" if ready else f"not ready (last status {status}, exit {process.poll()})\n")
            + log.read_text()[-4000:],
        )
        self.outputs[line] = outcome
        return outcome

    @staticmethod
    def _roles_loading(url: str) -> bool:
        """A model role (the challenger, beside the champion /readyz waits for) is still loading."""
        answer = requests.get(url + "/versions", timeout=5)  # a token-protected server answers 401: not known
        return answer.status_code == 200 and any(role.get("state") == "loading" for role in answer.json().values())

    def stop_server(self, readme_port: int) -> None:
        server = self.servers.pop(readme_port)
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGINT)  # Ctrl-C: how a user ends `pneumo serve`
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait(timeout=10)
        stop_ray_under(server.ray_tmpdir)

    def _learn(self, command: Command, outcome: Outcome) -> None:
        """Placeholder values from what a command printed (the run id, the best model, the job id)."""
        if command.argv[:2] == ("pneumo", "run") and "RUN_ID" not in self.values:
            run = re.search(r"^mlflow run:\s+(\w+)", outcome.output, re.M)
            best = re.search(r"^best model:\s+(\S+)", outcome.output, re.M)
            if run and best:
                relative = os.path.relpath(best.group(1), self.root)
                self.values.update(dict(zip(QUICKSTART_PLACEHOLDERS, (run.group(1), relative, relative))))
        submitted = re.search(r"raysubmit_\w+", outcome.output)
        if command.argv[:3] == ("ray", "job", "submit") and submitted:
            self.values["SUBMISSION_ID"] = submitted.group(0)

    def close(self) -> None:
        for port in list(self.servers):
            self.stop_server(port)
        for tmpdir in self.tmpdirs:
            stop_ray_under(tmpdir)
            shutil.rmtree(tmpdir, ignore_errors=True)


SAVED_AS = re.compile(r"^#\s*(experiments/[\w.-]+\.ya?ml)\s*$")  # a yaml block's first line: the file to save it as


def write_props(scratch: Scratch, blocks: Sequence[Block] = ()) -> None:
    """The files the pages' commands name that a user has and a fresh checkout does not (see the
    module docstring), and the experiment files the pages tell the reader to save."""
    import numpy as np
    import pydicom.data
    from PIL import Image

    from bench.films import dicom_bytes
    from pneumo.data.synthetic import generate_chest_xrays

    root = scratch.root
    for name, seed in (("chest_xray", 11), ("other-hospital", 12)):
        generate_chest_xrays(root / "data" / name, n_images=200, image_size=64, seed=seed)
    films = sorted((root / "data" / "chest_xray" / "test").glob("*/*.jpeg"))
    shutil.copy(films[0], root / "film.jpeg")
    shutil.copy(films[1], root / "a.jpeg")
    Image.open(films[2]).save(root / "b.png")
    grey = np.asarray(Image.open(films[0]).convert("L"), dtype=np.uint16) * 257  # 0..255 -> 0..65535
    (root / "film.dcm").write_bytes(dicom_bytes(grey, 16, WindowCenter=32768, WindowWidth=65536))
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), root / "ct.dcm")
    (root / "experiments" / "x.yaml").write_text("base: quickstart.yaml\nmodel:\n  nmae: resnet18\n")
    for block in blocks:
        saved = SAVED_AS.match(block.text.splitlines()[0]) if block.language == "yaml" and block.text else None
        if saved and not (root / saved.group(1)).exists():  # one the checkout has is shown, not written
            (root / saved.group(1)).write_text(block.text + "\n")

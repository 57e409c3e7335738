"""Check a README command against the parser of the tool that would run it, without running it.

Each tool's own parser decides: Ray's, Serve's and MLflow's click groups (a context built with
`make_context`, subcommands resolved, nothing invoked), pneumo's argparse parser, a benchmark's
argparse parser (stopped right after parsing), make's dry run, curl's option list. Tools that act on a
Kubernetes cluster or a container registry (kubectl, helm, docker, buildah) are not installed here: their
subcommand is checked against the commands each documents. A command that carries another one
(`ray exec cluster.yaml "serve deploy …"`, `ray job submit … -- pneumo run …`, `time …`,
`NAME=$(kubectl …)`) has the carried one checked too. An unknown command or option raises CommandRejected.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import click

REPO = Path(__file__).resolve().parents[1]
SHELL_BUILTINS = {"export", "source", ".", "cd", "unset"}
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")  # NAME=value, or NAME=$(command …)
# the subcommands each tool documents (kubectl 1.3x, helm 3, docker 2x, buildah 1.3x), and its global
# options that take a value (they may come before the subcommand)
SUBCOMMANDS = {
    "kubectl": (
        "annotate api-resources api-versions apply attach auth autoscale certificate cluster-info completion "
        "config cordon cp create debug delete describe diff drain edit events exec explain expose get "
        "kustomize label logs patch plugin port-forward proxy replace rollout run scale set taint top "
        "uncordon version wait",
        "-n --namespace --context --kubeconfig --cluster --user -s --server",
    ),
    "helm": (
        "completion create dependency env get help history install lint list package plugin pull push "
        "registry repo rollback search show status template test uninstall upgrade verify version",
        "-n --namespace --kube-context --kubeconfig",
    ),
    "docker": (
        "attach build builder buildx commit compose container context cp create exec export history image "
        "images import info inspect kill load login logout logs manifest network pause port ps pull push "
        "rename restart rm rmi run save search start stats stop system tag top unpause update version volume wait",
        "-H --host --context -c --config -l --log-level",
    ),
    "buildah": (
        "add build build-using-dockerfile bud commit config containers copy from images info inspect login "
        "logout manifest mount pull push rename rm rmi run source tag umount unshare version",
        "--root --runroot --storage-driver --registries-conf",
    ),
}


class CommandRejected(AssertionError):
    """The tool's parser refused the command (its message says why)."""


def _click_group(program: str) -> click.Command:
    if program == "ray":
        from ray.scripts.scripts import cli
    elif program == "serve":
        from ray.serve.scripts import cli
    elif program == "mlflow":
        from mlflow.cli import cli
    else:
        raise KeyError(program)
    return cli


def click_context(program: str, args: Sequence[str]) -> click.Context:
    """The innermost click context for `program args…`: what the command would be invoked with."""
    command: click.Command = _click_group(program)
    name, rest, parent = program, list(args), None
    while True:
        try:
            context = command.make_context(name, rest, parent=parent)
        except click.exceptions.Exit:  # --help, --version
            return click.Context(command)
        except click.ClickException as error:
            raise CommandRejected(f"{program}: {error.format_message()}") from None
        if not isinstance(command, click.Group):
            return context
        remaining = [*getattr(context, "_protected_args", []), *context.args]
        if not remaining:
            return context
        try:
            name, command, rest = command.resolve_command(context, remaining)
        except click.ClickException as error:
            raise CommandRejected(f"{program}: {error.format_message()}") from None
        parent = context


def _carried(program: str, context: click.Context, args: Sequence[str]) -> list[str] | None:
    """The command another one runs: `ray exec CLUSTER "CMD"`, or what follows `--` in `ray job submit`."""
    if program == "ray" and context.info_name == "exec":
        return shlex.split(context.params["cmd"])
    if program == "ray" and context.info_name == "submit" and "--" in args:
        return list(args[list(args).index("--") + 1 :])
    return None


def check_click(argv: Sequence[str]) -> None:
    context = click_context(argv[0], argv[1:])
    carried = _carried(argv[0], context, argv[1:])
    if carried:
        check_command(carried)


def check_argparse(parser: argparse.ArgumentParser, program: str, args: Sequence[str]) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            parser.parse_args(list(args))
        except SystemExit as exit_:
            if exit_.code:
                raise CommandRejected(f"{program}: {errors.getvalue().strip()}") from None


class _Parsed(Exception):
    """Raised right after a module's own argparse call parsed its arguments."""


def check_python_module(module: str, args: Sequence[str]) -> None:
    """`python -m MODULE args…`: the module's own argparse parser, stopped before the module runs."""
    if module == "bench":  # bench/__main__.py reads benchmark names, not options
        from bench.__main__ import BENCHMARKS

        unknown = [name for name in args if name not in (*BENCHMARKS, "all")]
        if unknown:
            raise CommandRejected(f"python -m bench: unknown benchmark {unknown}; choose from all, {list(BENCHMARKS)}")
        return
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CommandRejected(f"python -m {module}: no such module")
    if "parse_args(" not in Path(spec.origin).read_text():
        raise CommandRejected(f"python -m {module}: no argparse parser to check its arguments against")
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        try:
            self.format_help()  # what --help prints: argparse fails on a help text with a bare %
        except ValueError as error:
            raise CommandRejected(f"python -m {module} --help: {error}") from None
        raise _Parsed(original(self, args, namespace))

    errors = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop),
        mock.patch.object(sys, "argv", [module, *args]),
        contextlib.redirect_stderr(errors),
    ):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        except _Parsed:
            return
        except SystemExit as exit_:
            if exit_.code:
                raise CommandRejected(f"python -m {module}: {errors.getvalue().strip()}") from None
            return
    raise CommandRejected(f"python -m {module}: ran without parsing its arguments")


@functools.cache
def curl_options() -> frozenset[str]:
    listing = subprocess.run(["curl", "--help", "all"], capture_output=True, text=True, check=True).stdout
    return frozenset(re.findall(r"(?<![\w-])(--?[\w][\w-]*)", listing))


def check_curl(args: Sequence[str]) -> None:
    unknown = [arg for arg in args if arg.startswith("-") and arg.split("=")[0] not in curl_options()]
    if unknown:
        raise CommandRejected(f"curl: unknown options {unknown}")


def check_make(args: Sequence[str]) -> None:
    dry = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)
    if dry.returncode:
        raise CommandRejected(f"make {' '.join(args)}: {dry.stderr.strip()}")


def check_pneumo(args: Sequence[str]) -> None:
    from pneumo.cli import build_parser

    check_argparse(build_parser(), "pneumo", args)


def check_python(args: Sequence[str]) -> None:
    if len(args) >= 2 and args[0] == "-m":
        check_python_module(args[1], args[2:])
    elif len(args) >= 2 and args[0] == "-c":
        try:
            compile(args[1], "python -c", "exec")
        except SyntaxError as error:
            raise CommandRejected(f"python -c: {error}") from None
    elif not args or not (REPO / args[0]).exists():
        raise CommandRejected(f"python {' '.join(args)}: neither `-m MODULE` nor a script of this repository")


def check_subcommand(program: str, args: Sequence[str]) -> None:
    """The first word after the global options must be a subcommand the tool documents."""
    commands, valued = (set(words.split()) for words in SUBCOMMANDS[program])
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in valued and rest:
            rest.pop(0)
    if not rest or rest[0] not in commands:
        raise CommandRejected(
            f"{program}: unknown command {rest[0] if rest else '(none)'!r}; it has {sorted(commands)}"
        )


def carried_by_assignment(argv: Sequence[str]) -> list[str]:
    """`NAME=$(cmd args …)` -> [cmd, args…] (the command whose output is assigned); plain `NAME=value` -> []."""
    value = argv[0].split("=", 1)[1]
    if not value.startswith("$("):
        return []
    carried = [value[2:], *argv[1:]]
    carried[-1] = carried[-1].removesuffix(")")
    return [word for word in carried if word]


CHECKERS: dict[str, Callable[[Sequence[str]], None]] = {
    "pneumo": check_pneumo,
    "curl": check_curl,
    "make": check_make,
    "python": check_python,
}


def check_command(argv: Sequence[str]) -> None:
    """Raise CommandRejected unless the tool named by argv[0] accepts argv (nothing is run)."""
    program, args = argv[0], list(argv[1:])
    if program in SHELL_BUILTINS:
        return
    if ASSIGNMENT.match(program):
        carried = carried_by_assignment(argv)
        return check_command(carried) if carried else None
    if program in SUBCOMMANDS:
        return check_subcommand(program, args)
    if program == "time":
        return check_command(args)
    if program in ("ray", "serve", "mlflow"):
        return check_click(argv)
    if program not in CHECKERS:
        raise CommandRejected(f"{program}: the README test knows no parser for it; add one to tests/readme_cli.py")
    CHECKERS[program](args)

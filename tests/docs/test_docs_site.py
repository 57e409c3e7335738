"""The documentation site: it builds strictly, its reference pages are generated from the code and
cover all of it, and the product's pages speak only of the product.

The whole build (`mkdocs build --strict`, which runs docs/gen/pages.py and so imports the Serve app
for its OpenAPI description) runs once per session; the other tests call the generators in
docs/gen/reference.py directly, or build a two-page site to show that the strict settings fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MKDOCS = REPO / ".venv" / "bin" / "mkdocs"
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}  # a banner some plugins print


def load_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs" / "gen" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reference = load_reference()


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The real site, built as `make docs-build` builds it."""
    site = tmp_path_factory.mktemp("site")
    done = mkdocs_build(REPO / "mkdocs.yml", site)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, warnings
    return site


# ---- the build ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_site_builds_strictly_with_every_page(built_site):
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = re.findall(r"'([\w/.-]+\.md)'", str(nav))
    for page in pages:
        assert (built_site / page.replace(".md", ".html")).is_file() or (
            built_site / page.replace(".md", "/index.html")
        ).is_file(), page
    served = json.loads((built_site / "reference" / "openapi.json").read_text())
    http = (built_site / "reference" / "http-api.html").read_text()
    for path, operations in served["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in http, f"{method.upper()} {path} missing from the HTTP reference"
    architecture = (built_site / "explanation" / "architecture.html").read_text()
    assert "layers: generated" not in architecture and "+---" in architecture, "the layer diagram was not generated"


def small_site(tmp_path: Path, pages: dict[str, str], nav: list[str]) -> Path:
    """A site with the real mkdocs.yml's theme, extensions and validation, these pages and this nav."""
    real = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config = {
        "site_name": "check",
        "theme": real["theme"],
        "markdown_extensions": real["markdown_extensions"],
        "validation": real["validation"],
        "plugins": [plugin for plugin in real["plugins"] if not isinstance(plugin, dict)],  # no generated pages
        "nav": nav,
    }
    (tmp_path / "docs").mkdir()
    for name, text in pages.items():
        (tmp_path / "docs" / name).write_text(text)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


def test_a_dead_link_fails_the_build(tmp_path):
    config = small_site(tmp_path, {"index.md": "# Home\n\nSee [the guide](guide.md).\n"}, ["index.md"])
    done = mkdocs_build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "guide.md" in done.stderr and "not found" in done.stderr, done.stderr[-2000:]


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    config = small_site(tmp_path, {"index.md": "# Home\n", "orphan.md": "# Orphan\n"}, ["index.md"])
    done = mkdocs_build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "orphan.md" in done.stderr, done.stderr[-2000:]


def test_a_dead_anchor_fails_the_build(tmp_path):
    pages = {"index.md": "# Home\n\n[there](other.md#nowhere)\n", "other.md": "# Other\n\n## Somewhere\n"}
    done = mkdocs_build(small_site(tmp_path, pages, ["index.md", "other.md"]), tmp_path / "site")
    assert done.returncode != 0
    assert "nowhere" in done.stderr, done.stderr[-2000:]


# ---- the generated reference -------------------------------------------------------------------


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, found independently of the generator."""
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            keys += leaf_keys(type(default), f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def test_every_config_key_is_in_the_reference_with_its_default_and_comment():
    from pneumo.config import ExperimentConfig

    page = reference.config_reference()
    keys = leaf_keys(ExperimentConfig)
    assert len(keys) > 100 and "serve.drift_interval_s" in keys and "data.synth.seed" in keys
    missing = [key for key in keys if f"| `{key}` |" not in page]
    assert not missing, f"config keys missing from the reference: {missing}"
    assert "| `train.lr` | `float` | `0.001` | peak learning rate, reached after warmup |" in page
    assert "| `name` | `str` | `required` |" in page
    assert "| `train.precision` | `str` | `auto` | fp32 \\| bf16" in page, "a comment inside the field's parentheses"


def test_a_config_key_without_a_comment_fails_naming_the_key(tmp_path):
    source = tmp_path / "demo_config.py"
    source.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass, field

            @dataclass
            class EngineConfig:
                cylinders: int = 4  # how many
                speed_kmh: float = 120.0

            @dataclass
            class CarConfig:
                name: str = "car"  # what it is called
                engine: EngineConfig = field(default_factory=EngineConfig)
            """
        )
    )
    spec = importlib.util.spec_from_file_location("demo_config", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_config"] = module
    spec.loader.exec_module(module)
    with pytest.raises(reference.UndocumentedField, match=r"config key engine\.speed_kmh \(EngineConfig\.speed_kmh"):
        list(reference.config_keys(module.CarConfig))
    source.write_text(source.read_text().replace("120.0\n", "120.0  # top speed, km/h\n"))
    spec.loader.exec_module(module)
    keys = {key.key: key for key in reference.config_keys(module.CarConfig)}
    assert keys["engine.speed_kmh"].comment == "top speed, km/h" and keys["engine.cylinders"].default == "4"


def test_every_cli_command_and_option_is_in_the_reference():
    import argparse

    from pneumo.cli import build_parser

    page = reference.cli_reference()
    found = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        assert f"`{name}`" in page, f"command {name} missing"
        found.append(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sub_parser in action.choices.items():
                    walk(sub_parser, f"{name} {sub}")
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert re.search(rf"`{re.escape(option)}[ `,]", page), f"{name} {option} missing"

    walk(build_parser(), "pneumo")
    assert {"pneumo run", "pneumo data synth", "pneumo serve", "pneumo config show"} <= set(found)


def test_the_http_reference_documents_the_version_choice_and_the_answer_formats():
    """Every scoring route takes the version (header and query) and names the version that answered;
    /predict's and /explain's `format` values are those the code accepts."""
    from pneumo.serve.dicom import SR_FORMAT
    from pneumo.serve.explanations import EXPLAIN_FORMATS
    from pneumo.serve.versions import VERSION_HEADER, VERSION_QUERY

    openapi = reference.serve_openapi()
    formats = {"/predict": ["json", SR_FORMAT], "/explain": list(EXPLAIN_FORMATS), "/predict/batch": None}
    for path, accepted in formats.items():
        operation = openapi["paths"][path]["post"]
        parameters = {(p["name"], p["in"]): p for p in operation["parameters"]}
        assert {(VERSION_HEADER, "header"), (VERSION_QUERY, "query")} <= set(parameters), path
        assert VERSION_HEADER in operation["responses"]["200"]["headers"], path
        assert (parameters[("format", "query")]["schema"]["enum"] if accepted else None) == accepted, path
    page = reference.http_reference(openapi)
    assert f"`{VERSION_HEADER}`: the version that answered" in page and "| `format` | query |" in page


def test_alert_rules_name_only_series_the_code_exports():
    """The generated metrics page lists what the code creates; every series an alert reads is among them."""
    exported = {name for series in reference.prometheus_series() for name in series.exported}
    assert "ray_pneumo_requests_total" in exported and "ray_pneumo_request_latency_ms_bucket" in exported
    rules = yaml.safe_load(reference.ALERT_RULES.read_text())["groups"]
    named = {name for group in rules for rule in group["rules"] for name in re.findall(r"ray_pneumo_\w+", rule["expr"])}
    assert named and named <= exported, f"alert rules read series no code exports: {sorted(named - exported)}"
    page = reference.metrics_reference()
    assert all(f"`{name}`" in page for name in exported)


def test_every_mlflow_tag_constant_is_in_the_reference():
    page = reference.mlflow_reference()
    source = (REPO / "pneumo" / "tracking.py").read_text()
    tags = dict(re.findall(r'^(TAG_\w+) = "([^"]+)"', source, re.M))
    assert len(tags) > 10
    missing = [name for name, value in tags.items() if f"| `{value}` |" not in page]
    assert not missing, missing
    assert "`data/split.csv`" in page and "`config.yaml`" in page, "artifacts read from the code"


def test_the_layer_diagram_follows_the_import_contract():
    layers = reference.import_layers()
    diagram = reference.layers_diagram(layers)
    assert layers[0] == ["cli"] and layers[-1] == ["config"]
    rows = [re.findall(r"\| (\w+)", line) for line in diagram.splitlines() if line.startswith("|")]
    assert rows == layers


# ---- what the pages say ------------------------------------------------------------------------

PRODUCT_PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PROCESS_WORDS = re.compile(
    r"\bround \d|\bthis round\b|\bissue #\d|\bthis session\b|\bbefore this change\b|\btried, dropped\b|\bused before\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", PRODUCT_PAGES, ids=[p.relative_to(REPO).as_posix() for p in PRODUCT_PAGES])
def test_pages_speak_of_the_product_not_of_how_it_was_made(page):
    hits = [
        f"{n}: {line.strip()}" for n, line in enumerate(page.read_text().splitlines(), 1) if PROCESS_WORDS.search(line)
    ]
    assert not hits, f"{page.relative_to(REPO)}: process words: {hits}"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move detail into docs/"


NAMED_PATH = re.compile(r"`((?:pneumo|tests|bench|deploy|experiments)/[\w./-]+)`")
WRITTEN_BY_READERS = re.compile(r"^# (experiments/[\w.-]+\.yaml)$", re.M)  # a file a page asks the reader to save


@pytest.mark.parametrize("page", PRODUCT_PAGES, ids=[p.relative_to(REPO).as_posix() for p in PRODUCT_PAGES])
def test_files_the_pages_name_exist(page):
    text = page.read_text()
    written = set(WRITTEN_BY_READERS.findall(text))
    named = {path.rstrip("/.") for path in NAMED_PATH.findall(text)}
    missing = [
        path for path in sorted(named - written) if not path.startswith("bench/results") and not (REPO / path).exists()
    ]
    assert not missing, f"{page.relative_to(REPO)} names files the repository does not have: {missing}"

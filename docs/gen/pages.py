"""mkdocs-gen-files script: writes the reference pages (docs/gen/reference.py) into the build, never
into docs/, and fills the generated parts of hand-written pages (the layer diagram)."""

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference

for page, render in reference.PAGES.items():
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(render())
    mkdocs_gen_files.set_edit_path(page, "gen/reference.py")
with mkdocs_gen_files.open("reference/openapi.json", "w") as out:
    out.write(reference.openapi_json())

ARCHITECTURE = "explanation/architecture.md"
with mkdocs_gen_files.open(ARCHITECTURE, "r") as page:
    text = page.read()
if reference.LAYERS_MARKER not in text:
    raise ValueError(f"docs/{ARCHITECTURE} lost its marker {reference.LAYERS_MARKER!r}")
with mkdocs_gen_files.open(ARCHITECTURE, "w") as page:
    page.write(text.replace(reference.LAYERS_MARKER, reference.layers_diagram()))

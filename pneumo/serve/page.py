"""The web page at `/`: three files shipped inside the package (page/), read once, served as they are.
Nothing is fetched from elsewhere, so it works on an offline network."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from starlette.responses import JSONResponse, Response

PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_PATHS = frozenset({"/", "/page/app.js", "/page/style.css"})  # open without a token: no data in them


@cache
def _read(name: str) -> bytes:
    return (files("pneumo.serve") / "page" / name).read_bytes()


def page_file(name: str) -> Response:
    """One of the page's files, or a JSON 404 naming it."""
    if name not in PAGE_FILES:
        return JSONResponse(
            {"error": f"no page file {name!r} (the page has {', '.join(PAGE_FILES)})", "field": "path"}, status_code=404
        )
    return Response(_read(name), media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})

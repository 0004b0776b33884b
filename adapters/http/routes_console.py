"""The operators' console (contract section 9): ``GET /ui/``, a static page.

Hand-written HTML, CSS and JavaScript under ``adapters/http/console/``, and the chart
library uPlot vendored as files under ``console/vendor/`` (its version and licence there),
shipped in the wheel as package data: nothing is built or fetched at run time, so it
works on a line with no internet. The page and its assets hold no data and are public;
everything they show comes from the API routes, with ``X-API-Key`` when one is configured.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

router = APIRouter(tags=["console"])

PAGE = "index.html"  # served as /ui/
# The page's files and their types: nothing else under /ui/ is served.
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "sse.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/LICENSE": "text/plain; charset=utf-8",  # uPlot's MIT notice goes with its copy
}
# Reachable without X-API-Key (routes_guard): the page must load to ask for the key.
CONSOLE_PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in ASSETS)})


@cache
def _asset(name: str) -> bytes:
    path = resources.files("adapters.http") / "console"
    for part in name.split("/"):  # one part at a time: a Traversable may not split paths
        path = path / part
    return path.read_bytes()


def _served(name: str, media_type: str) -> Response:
    # no-cache: a browser asks again, so an upgraded agent's page never runs an old script.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return Response(_asset(name), media_type=media_type, headers=headers)


@router.get("/ui", include_in_schema=False)
async def console_redirect() -> RedirectResponse:
    # Relative, so it also works behind a proxy that serves the API under a prefix.
    return RedirectResponse("ui/", status_code=308)


@router.get(
    "/ui/",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the console page"}},
)
async def console_page() -> Response:
    """The operators' console: health, ROI states, live verdicts with image and heatmap,
    alerts, score trends and calibrations. Public: it asks for the API key itself."""
    return _served(PAGE, "text/html; charset=utf-8")


@router.get("/ui/{name:path}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"the console has no file {name!r}")
    return _served(name, ASSETS[name])

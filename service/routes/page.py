"""The registry web page at ``/``: static HTML and vanilla JS that read the JSON API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def registry_page() -> FileResponse:
    # No auth here: the page holds no data; its API calls send the key typed into it.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def install_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)

"""The captures page: what the tap intercepted, in total and per model id, read from the capture index.

An unreadable index raises ``CaptureStoreError``; ``ConsoleRoute`` answers it
with the API's 503 page. The store records only what was written: drops (a
full queue, a failed write) are counted by the tap itself, not here.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from attacker.service.api.deps import get_captures, get_catalog, get_settings
from attacker.service.bundles import BundleCatalog
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def bundles_by_model_id(catalog: BundleCatalog) -> dict[str, str]:
    """model id -> the folder name of the first bundle (by name) that holds that model."""
    names: dict[str, str] = {}
    for entry in catalog.list_bundles():
        names.setdefault(entry.manifest.model_id, entry.name)
    return names


@router.get("/captures")
def captures_page(page: ConsolePage) -> HTMLResponse:
    settings = get_settings(page.request)
    summary = get_captures(settings).summary()
    return page.render("captures.html", title="Captures", summary=summary, captures_dir=str(settings.captures_dir),
                       bundles=bundles_by_model_id(get_catalog(settings)))

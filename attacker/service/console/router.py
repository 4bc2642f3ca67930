"""The console's routes in one router, mounted by ``attacker.service.app.create_app``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from attacker.service.console.pages import audits, captures, compare, experiments, login, models
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get(PREFIX)
@router.get(PREFIX + "/")
def console_home(page: ConsolePage) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/audits", status_code=303)


for module in (login, audits, compare, models, captures, experiments):
    router.include_router(module.router)

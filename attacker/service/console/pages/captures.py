"""(being written)"""

from __future__ import annotations

from fastapi import APIRouter

from attacker.service.console.web import PREFIX, ConsoleRoute

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

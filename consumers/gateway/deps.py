"""The gateway's FastAPI dependency: the app's ``Gateway``, for every router."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from consumers.gateway.core import Gateway


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


Api = Annotated[Gateway, Depends(_gateway)]

"""API keys over REST (admin key only): ``POST /v1/keys`` (201, with the secret, shown only
there), ``GET /v1/keys`` (no secrets), ``DELETE /v1/keys/{key_id}`` (204; streams and sockets
opened with it are closed)."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, Router, delete, get, post
from litestar.params import FromPath, JSONBody

from arrwdb.domain.access import Need
from arrwdb.domain.errors import NotFoundError
from arrwdb.domain.models import ApiKey, format_timestamp
from arrwdb.transports._body import WireBody
from arrwdb.transports.guard import caller_of
from arrwdb.transports.messages import KeyIn, KeyList, KeyOut
from arrwdb.transports.runtime import RuntimeDep


def key_out(key: ApiKey, secret: str | None = None) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        libraries=list(key.libraries),
        access=key.access,
        created_at=format_timestamp(key.created_at),
        key=secret,
    )


@post("/v1/keys", status_code=201, tags=["keys"])
async def create_key(
    runtime: RuntimeDep, request: Request[Any, Any, Any], data: JSONBody[KeyIn]
) -> KeyOut:
    """A new API key (admin key only): ``read`` or ``write`` access to the libraries named, or
    to every library (``["*"]``). The answer is the only place its secret ``key`` appears."""
    caller = caller_of(request.scope)
    caller.require(Need.ADMIN)
    service = runtime.service

    def exists(library_id: str) -> bool:
        try:
            service.get_library(library_id)
        except NotFoundError:
            return False
        return True

    key, secret = await anyio.to_thread.run_sync(
        runtime.keys.create, data.name, data.libraries, data.access, exists
    )
    return key_out(key, secret)


@get("/v1/keys", tags=["keys"])
async def list_keys(runtime: RuntimeDep, request: Request[Any, Any, Any]) -> KeyList:
    """Every API key that is not revoked, oldest first, without secrets (admin key only)."""
    caller = caller_of(request.scope)
    caller.require(Need.ADMIN)
    keys = await anyio.to_thread.run_sync(runtime.keys.all)
    return KeyList(keys=[key_out(k) for k in keys])


@delete("/v1/keys/{key_id:str}", status_code=204, tags=["keys"])
async def revoke_key(
    runtime: RuntimeDep, request: Request[Any, Any, Any], key_id: FromPath[str]
) -> None:
    """Revoke a key (204): refused from now on; its open streams and sockets are closed."""
    caller = caller_of(request.scope)
    caller.require(Need.ADMIN)
    await anyio.to_thread.run_sync(runtime.keys.revoke, key_id)


def router() -> Router:
    return Router(path="/", route_handlers=[create_key, list_keys, revoke_key], dto=WireBody)

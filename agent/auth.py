"""Bearer-token check for mutating API calls.

Without a configured token every mutating call is refused (403): the API is never open.
With one, a missing or wrong ``Authorization: Bearer ...`` gets 401. Tokens are compared in
constant time.

    token = load_token(settings)            # None: mutating calls refused
    check_bearer(request, token)            # raises web.HTTPUnauthorized / HTTPForbidden
"""

from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web

from agent.config import APISettings

__all__ = ["check_bearer", "load_token"]


def load_token(settings: APISettings) -> str | None:
    """The configured token, read from ``token_file`` if set. Raises ValueError if unusable."""
    if settings.token_file:
        try:
            token = Path(settings.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"api.token_file {settings.token_file}: {exc.strerror or exc}"
            ) from exc
        if len(token) < 16:
            raise ValueError(
                f"api.token_file {settings.token_file}: token must be at least 16 characters"
            )
        return token
    return settings.token


def check_bearer(request: web.Request, token: str | None) -> None:
    """Allow the request only with the right bearer token."""
    if token is None:
        raise web.HTTPForbidden(
            text="mutating API calls are disabled: no api.token or api.token_file is configured\n"
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise web.HTTPUnauthorized(
            text="missing bearer token (Authorization: Bearer <token>)\n",
            headers={"WWW-Authenticate": 'Bearer realm="seismo"'},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise web.HTTPUnauthorized(
            text="wrong bearer token\n", headers={"WWW-Authenticate": 'Bearer realm="seismo"'}
        )

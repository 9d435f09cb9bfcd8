"""Optional bearer-token auth (constant-time comparison)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status


def bearer_auth(api_key: str | None):
    """A FastAPI dependency that checks ``Authorization: Bearer <key>``; a no-op without a key."""
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key (send 'Authorization: Bearer <key>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check

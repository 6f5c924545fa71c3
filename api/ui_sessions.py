"""Sign-in for the pool page: an admin's bearer token, or a session made by the login form.

The form's session lives in a cookie (Secure, HttpOnly, SameSite=Strict, Path=/ui) that
holds a random credential, never the token. Redis keeps only the credential's SHA-256
digest, with the tenant and the digest of the token it was made with, for SESSION_S; the
session ends at sign-out, at expiry, or when that token is no longer configured."""

import secrets

from flask import Request, current_app
from redis import Redis

from pool_manager.keys import Keys

from .auth import digest

COOKIE = "greenroom_ui"
SESSION_S = 8 * 3600


class UiSessions:
    def __init__(self, redis: Redis, deployment: str):
        self.redis, self.keys = redis, Keys(deployment)

    def open(self, tenant: str, token_digest: str) -> str:
        """A new session's credential (for the cookie)."""
        credential = secrets.token_urlsafe(32)
        key = self.keys.ui_session(digest(credential))
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"tenant": tenant, "token": token_digest})
            pipe.expire(key, SESSION_S)
            pipe.execute()
        return credential

    def tenant(self, credential: str, tokens: dict[str, str]) -> str | None:
        """The session's tenant while its token is still configured (tokens: digest -> tenant)."""
        found = self.redis.hgetall(self.keys.ui_session(digest(credential)))
        return found["tenant"] if found and tokens.get(found.get("token", "")) == found["tenant"] else None

    def close(self, credential: str) -> None:
        self.redis.delete(self.keys.ui_session(digest(credential)))


def signed_in(request: Request, sessions: UiSessions) -> tuple[str | None, str]:
    """(tenant, "") for a valid bearer token or session cookie; else (None, why)."""
    tokens = current_app.extensions["greenroom_tokens"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme:
        tenant = tokens.get(digest(token.strip())) if scheme.lower() == "bearer" else None
        return (tenant, "") if tenant else (None, "That token is not valid.")
    if credential := request.cookies.get(COOKIE):
        tenant = sessions.tenant(credential, tokens)
        return (tenant, "") if tenant else (None, "Your session has ended: sign in again.")
    return None, ""

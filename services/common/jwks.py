"""An identity provider's signing keys (a JWKS), from a URL or a file, cached and refreshed so keys rotate
without a restart.

A token names its key by `kid`. A `kid` the cached set does not have triggers a refresh: the IdP may have
added a key. Refreshes are bounded, so tokens with made-up `kid`s cannot turn every request into a fetch:
one fetch at a time (callers waiting for it use its result instead of fetching again) and at most one per
`min_refresh_seconds` after the first successful load. A set older than `max_age_seconds` is refreshed in
the background, so a key the IdP withdrew stops being accepted. A failed fetch keeps the keys already held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

log = logging.getLogger("service.auth")


def parse_jwks(raw: bytes | str) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by `kid` (encryption keys and keys without `kid` are skipped)."""
    document: Any = orjson.loads(raw)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a `keys` list")
    signing = [k for k in document["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig" and k.get("kid")]
    if not signing:
        raise ValueError("the JWKS has no signing key with a kid")
    return {str(key.key_id): key for key in jwt.PyJWKSet(signing).keys}


class SigningKeys:
    """The JWKS of one source (`url` or `file`), held in memory and refreshed as the module says."""

    def __init__(
        self,
        *,
        url: str = "",
        file: str = "",
        min_refresh_seconds: float = 10.0,
        max_age_seconds: float = 300.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.url = url
        self.file = file
        self.source = url or file
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.timeout_seconds = timeout_seconds
        self.keys: dict[str, jwt.PyJWK] = {}
        self.generation = 0  # bumped by every load: a caller that waited for one uses it instead of fetching
        self.loaded_at = float("-inf")
        self.withdrawals = 0  # loads that dropped a key: a verifier forgets the tokens it cached before
        self.next_fetch_at = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        if file:
            # A file is read at start, so a wrong path stops the process instead of refusing every token.
            self._install(parse_jwks(Path(file).read_bytes()), initial=True)

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key named `kid` in the set held now."""
        return self.keys.get(kid)

    async def refresh(self, seen_generation: int) -> None:
        """Load the set again unless another caller did since `seen_generation` or the rate limit says wait."""
        async with self._lock:
            if self.generation != seen_generation or time.monotonic() < self.next_fetch_at:
                return
            try:
                keys = await self._load()
            except (httpx.HTTPError, OSError, ValueError, jwt.PyJWTError) as exc:
                # The source, never a token: tokens are not logged.
                log.warning("JWKS from %s not loaded (%s); keeping %d keys", self.source, exc, len(self.keys))
                self.next_fetch_at = time.monotonic() + self.min_refresh_seconds
                return
            self._install(keys, initial=not self.keys)

    def refresh_if_stale(self) -> None:
        """Start a background refresh when the set is older than `max_age_seconds` (requests go on meanwhile)."""
        now = time.monotonic()
        if now - self.loaded_at < self.max_age_seconds or now < self.next_fetch_at or self._lock.locked():
            return
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self.refresh(self.generation))

    def _install(self, keys: dict[str, jwt.PyJWK], *, initial: bool) -> None:
        if set(self.keys) - set(keys):
            self.withdrawals += 1
        self.keys = keys
        self.generation += 1
        self.loaded_at = time.monotonic()
        # The first load arms no limit: a key the IdP adds right after start-up must not wait for it.
        self.next_fetch_at = float("-inf") if initial else self.loaded_at + self.min_refresh_seconds

    async def _load(self) -> dict[str, jwt.PyJWK]:
        if self.url:
            async with httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False) as client:
                resp = await client.get(self.url, headers={"accept": "application/json"})
                resp.raise_for_status()
                return parse_jwks(resp.content)
        return parse_jwks(await asyncio.to_thread(Path(self.file).read_bytes))

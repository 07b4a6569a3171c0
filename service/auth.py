"""Bearer-key authentication: keys are compared as sha256 digests, in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from service.settings import Settings, hash_key

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    owner: str  # sha256 of the key, or ANONYMOUS without auth
    admin: bool

    def scope(self, all_owners: bool = False) -> str | None:
        """The owner filter for queries: None (everyone) only for admins asking for everything."""
        return None if (self.admin and all_owners) else self.owner


def authenticate(settings: Settings, key_hashes: dict[str, bool], token: str | None) -> Principal | None:
    """The caller holding the bearer `token`, or None; without keys configured, insecure mode admits all."""
    if settings.insecure_no_auth and not key_hashes:
        return Principal(ANONYMOUS, admin=True)
    if not token or not token.strip():
        return None
    digest = hash_key(token.strip())
    for known, admin in key_hashes.items():
        if hmac.compare_digest(known, digest):
            return Principal(known, admin)
    return None

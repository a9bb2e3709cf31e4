"""Secret tokens (worker tokens, user API tokens): 256 random bits, stored only as their SHA-256."""

import hashlib
import secrets


def hash_token(token: str) -> str:
    """SHA-256 of a token. Tokens are 256-bit random strings: a fast hash is safe to store (SECURITY.md)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)

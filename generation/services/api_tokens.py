"""Users' REST API tokens and ComfyUI URL keys: made (shown once), looked up by their hash, listed and revoked
by their owner. A token opens the REST API (and the front door) through the `Authorization` header; a URL key
opens only the ComfyUI front door, from the path (`/comfy/k/<key>/…`: generation.comfy_keys)."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from generation.exceptions import InvalidInput, NotFound
from generation.models import ApiToken
from generation.tokens import hash_token, new_token

API_TOKEN_MAX_DAYS = 3650


@transaction.atomic
def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str = "",
    expires_in_days: int | None = None,
    kind: str = ApiToken.Kind.API,
) -> tuple[ApiToken, str]:
    """A new token (or URL key, `kind`) for `user`, returned with the token itself: the only time it is
    seen. None: no expiry."""
    if kind not in ApiToken.Kind.values:
        raise InvalidInput(f"Unknown kind {kind!r}.", fields={"kind": [f"One of {ApiToken.Kind.values}."]})
    name = name.strip()
    if len(name) > 100:
        raise InvalidInput("A token's name has at most 100 characters.", fields={"name": ["Too long."]})
    if expires_in_days is not None and not 1 <= expires_in_days <= API_TOKEN_MAX_DAYS:
        raise InvalidInput(
            f"A token expires after 1 to {API_TOKEN_MAX_DAYS} days, or never.",
            fields={"expires_in_days": ["Out of range."]},
        )
    token = new_token()
    expires_at = None if expires_in_days is None else timezone.now() + timedelta(days=expires_in_days)
    api_token = ApiToken.objects.create(
        user=user,
        kind=kind,
        name=name,
        token_hash=hash_token(token),
        token_hint=token[:4],
        expires_at=expires_at,
    )
    return api_token, token


@transaction.atomic
def api_token_revoke(*, user: AbstractBaseUser, token_id: int) -> None:
    """Delete one of `user`'s tokens; someone else's (or none) is NotFound."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    if not deleted:
        raise NotFound("No such token.")


def api_token_user(token: str, *, kind: str = ApiToken.Kind.API) -> AbstractBaseUser | None:
    """The active user this unexpired token of `kind` belongs to, looked up by its SHA-256 (nothing secret
    in SQL). A URL key is no API token, nor the other way round."""
    found = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token), kind=kind)
    api_token = found.first()
    if api_token is None or api_token.is_expired(timezone.now()) or not api_token.user.is_active:
        return None
    return api_token.user

"""`python manage.py createapitoken USER`: make a REST API token for a user and print it once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from generation.exceptions import InvalidInput
from generation.services import api_token_create


class Command(BaseCommand):
    help = "Make a REST API token for USER and print it once (only its hash is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for (shown on the account page).")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after this many days.")
        parser.add_argument("--token-only", action="store_true", help="Print only the token (for scripts).")

    def handle(self, *args, username: str, name: str, expires_days: int | None, token_only: bool, **options):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        try:
            api_token, token = api_token_create(user=user, name=name, expires_in_days=expires_days)
        except InvalidInput as exc:
            raise CommandError(exc.detail)
        if token_only:
            self.stdout.write(token)
            return
        expiry = "never expires"
        if api_token.expires_at:
            expiry = f"expires {api_token.expires_at:%Y-%m-%d %H:%M} UTC"
        self.stdout.write(
            f"API token for {username!r} ({expiry}), shown only this once:\n\n  {token}\n\n"
            "Send it as `Authorization: Token <token>`. List and revoke tokens on /accounts/tokens/."
        )

"""`python manage.py createworker NAME`: create a worker and print its token once."""

from django.core.management.base import BaseCommand, CommandError

from generation.exceptions import InvalidInput
from workers_app.models import Worker
from workers_app.services import worker_create, worker_rotate_token


class Command(BaseCommand):
    help = "Create a worker (or, with --rotate, give an existing one a new token) and print the token once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--rotate", action="store_true", help="Replace the token of an existing worker.")
        parser.add_argument("--token-only", action="store_true", help="Print only the token (for scripts).")

    def handle(self, *args, name: str, rotate: bool, token_only: bool, **options) -> None:
        if rotate:
            worker = Worker.objects.filter(name=name).first()
            if worker is None:
                raise CommandError(f"No worker named {name!r}.")
            token = worker_rotate_token(worker=worker)
        else:
            try:
                worker, token = worker_create(name=name)
            except InvalidInput as exc:
                raise CommandError(exc.detail)
        if token_only:
            self.stdout.write(token)
            return
        self.stdout.write(
            f"Worker {worker.name!r} (id {worker.pk}). Its token, shown only this once:\n\n  {token}\n"
        )
        self.stdout.write(
            "Start it with: python manage.py runworker --scheduler URL --token TOKEN --comfyui URL"
        )

"""The checkout's `.env` for local use: `KEY=value` lines the settings read, under the real environment.

`make run` writes one with a generated SECRET_KEY (`python -m t2i_project.envfile` does the same), so the
farm and every `manage.py` command work here without `DEBUG=1`. It is never committed (.gitignore).
A deployment sets real environment variables, which always win over the file.
"""

import os
import secrets
import sys
from pathlib import Path


def parse(text: str) -> dict[str, str]:
    """`KEY=value` lines; blank lines and `#` comments are skipped, one pair of quotes around a value is
    dropped. A line without `=` is an error: the settings would otherwise miss a value silently."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"line {number}: expected KEY=value, not {line!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def load(path: Path | str) -> None:
    """Put the file's variables into the environment, each only where the environment has none: a real
    variable always wins. No file (or an empty path): nothing happens."""
    if not path or not Path(path).is_file():
        return
    try:
        values = parse(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        # Settings turn this into ImproperlyConfigured; here a plain error keeps the module free of Django.
        raise ValueError(f"{path}: {exc}") from None
    for key, value in values.items():
        os.environ.setdefault(key, value)


def create(path: Path | str) -> bool:
    """Write a new file with a generated SECRET_KEY, readable by its owner only; False when one exists."""
    path = Path(path)
    if path.exists():
        return False
    text = (
        "# Local settings for this checkout (written by `make run`; never commit it).\n"
        "# Real environment variables win over these. More variables: README.md, Settings.\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / ".env"
    if create(target):
        print(f"wrote {target} with a generated SECRET_KEY")

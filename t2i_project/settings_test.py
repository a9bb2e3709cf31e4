"""Test settings: the real settings, with a test secret and a file-backed SQLite test database.

A file (not :memory:) lets the multi-process leasing tests share the database.
"""

import os
import tempfile

# Tests never read the checkout's .env (t2i_project.envfile): only what they set themselves, here and in the
# processes they start.
os.environ["T2I_ENV_FILE"] = ""
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("T2I_SUBMIT_RATE", "10000/min")
# The listener thread's own connection would keep the test database open at teardown; polling suffices.
os.environ.setdefault("T2I_LISTEN_NOTIFY", "0")

from t2i_project.settings import *  # noqa: F403
from t2i_project.settings import DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Child processes inherit the variable, so they open the same file as the test run that spawned them.
    os.environ.setdefault(
        "T2I_TEST_SQLITE", os.path.join(tempfile.gettempdir(), f"t2i_test_{os.getpid()}.sqlite3")
    )
    DATABASES["default"]["TEST"] = {"NAME": os.environ["T2I_TEST_SQLITE"]}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

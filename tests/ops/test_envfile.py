"""The checkout's `.env` (t2i_project.envfile): written once with a SECRET_KEY, read by the settings under
the real environment, which always wins; the tests never read it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from t2i_project import envfile

ROOT = Path(__file__).resolve().parents[2]


def test_create_writes_a_secret_key_once_for_its_owner_only(tmp_path):
    path = tmp_path / ".env"
    assert envfile.create(path)
    first = path.read_text()
    assert len(envfile.parse(first)["SECRET_KEY"]) >= 50
    assert path.stat().st_mode & 0o777 == 0o600
    assert not envfile.create(path)
    assert path.read_text() == first


def test_parse_skips_comments_and_drops_quotes():
    text = "# a comment\n\nDEBUG=1\nexport NAME = 'farm'\nEMPTY=\nURL=\"http://a/?b=c\"\n"
    assert envfile.parse(text) == {"DEBUG": "1", "NAME": "farm", "EMPTY": "", "URL": "http://a/?b=c"}
    with pytest.raises(ValueError, match="line 2"):
        envfile.parse("A=1\nnot a setting\n")


def test_load_fills_in_what_the_environment_lacks_and_never_overrides(tmp_path, monkeypatch):
    path = tmp_path / ".env"
    path.write_text("SECRET_KEY=from-the-file\nT2I_ENVFILE_TEST=from-the-file\n")
    monkeypatch.setenv("SECRET_KEY", "from-the-environment")
    monkeypatch.delenv("T2I_ENVFILE_TEST", raising=False)
    envfile.load(path)
    assert os.environ["SECRET_KEY"] == "from-the-environment"
    assert os.environ.pop("T2I_ENVFILE_TEST") == "from-the-file"
    envfile.load(tmp_path / "missing")  # no file: nothing happens
    envfile.load("")


def settings_secret_key(env_file: Path, **env: str) -> subprocess.CompletedProcess:
    """Import the real settings in a fresh process with only `env` (and the PATH) set."""
    code = "from t2i_project import settings; print(settings.SECRET_KEY)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "T2I_ENV_FILE": str(env_file), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_read_the_file_without_debug_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    missing = settings_secret_key(env_file)
    assert missing.returncode != 0 and "make run" in missing.stderr
    envfile.create(env_file)
    key = envfile.parse(env_file.read_text())["SECRET_KEY"]
    assert settings_secret_key(env_file).stdout.strip() == key
    assert settings_secret_key(env_file, SECRET_KEY="real-variable").stdout.strip() == "real-variable"


def test_the_tests_never_read_the_checkouts_file():
    assert os.environ["T2I_ENV_FILE"] == ""

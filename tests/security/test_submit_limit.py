"""One submit limit for the web form, the REST API and the seed's POST /generate, counted in the database
(so that it holds across server processes; one conditional UPDATE per submit), keyed on the user or on a
client address that a client cannot choose, and the login lockout on the same address (SECURITY.md, "Floods"
and "Login rate limiting")."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from http import HTTPStatus

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.core.management import call_command
from django.db import OperationalError, connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_redis.cache import RedisCache
from rest_framework.test import APIClient

from generation import jobs
from generation.client_address import client_address
from generation.exceptions import Throttled
from generation.models import SubmitCount, Task
from generation.services import submit_limit
from tests.security.test_controls import PASSWORD, settings_in_subprocess, sign_in
from tests.web.test_generate import form_data

pytestmark = pytest.mark.django_db

LIMIT = 3
BODY = {"prompt": "a fox", "width": 64, "height": 64}
NOON = datetime(2026, 12, 5, 12, 0, 10, tzinfo=UTC)  # 50 s before the minute's window ends


@pytest.fixture
def limit(settings, clock):
    """At most LIMIT submits a minute, the clock frozen inside one window, and no counts from before."""
    settings.T2I = {**settings.T2I, "SUBMIT_RATE": (LIMIT, 60), "TRUSTED_PROXIES": 0}
    clock.now = NOON


@pytest.fixture
def anonymous_submit(settings, limit):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}


def assert_throttled(response) -> None:
    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS
    body = response.json()
    assert body["error"] == "throttled" and body["fields"] == {}
    assert body["detail"] == "At most 3 submits per minute; retry in 50 s."
    assert response["Retry-After"] == "50"


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- One count for the three ways in --------------------------------------------------------------------


def test_the_form_the_rest_api_and_generate_share_one_count(limit, user, client_for):
    api, alice = api_for(user), client_for(user)
    assert alice.post(reverse("web:generate"), form_data()).status_code == HTTPStatus.FOUND
    assert api.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED
    assert api.post("/generate", BODY, format="json").status_code == HTTPStatus.OK

    assert_throttled(api.post("/api/v1/tasks/", BODY, format="json"))
    assert_throttled(api.post("/generate", BODY, format="json"))
    page = alice.post(reverse("web:generate"), form_data(prompt="one more"))
    assert page.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert page.context["form"].non_field_errors() == ["At most 3 submits per minute; retry in 50 s."]
    assert "At most 3 submits per minute" in page.content.decode()
    assert page.context["form"]["prompt"].value() == "one more"  # what was typed is kept
    assert Task.objects.filter(owner=user).count() == LIMIT


def test_the_form_is_throttled_on_its_own(limit, user, client_for):
    alice = client_for(user)
    for _ in range(LIMIT):
        assert alice.post(reverse("web:generate"), form_data()).status_code == HTTPStatus.FOUND
    assert alice.post(reverse("web:generate"), form_data()).status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert Task.objects.count() == LIMIT


def test_generate_is_throttled_on_its_own(limit, user):
    api = api_for(user)
    for _ in range(LIMIT):
        assert api.post("/generate", BODY, format="json").status_code == HTTPStatus.OK
    assert_throttled(api.post("/generate", BODY, format="json"))
    assert Task.objects.count() == LIMIT


def test_each_user_has_a_count_and_the_next_window_starts_afresh(limit, user, other_user, clock):
    alice, bob = api_for(user), api_for(other_user)
    for _ in range(LIMIT):
        alice.post("/api/v1/tasks/", BODY, format="json")
    assert_throttled(alice.post("/api/v1/tasks/", BODY, format="json"))
    assert bob.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED

    clock.advance(50)  # the next minute
    assert alice.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED


def test_invalid_submits_count_too(limit, user):
    api = api_for(user)
    for _ in range(LIMIT):
        assert api.post("/api/v1/tasks/", {"prompt": ""}, format="json").status_code == HTTPStatus.BAD_REQUEST
    assert_throttled(api.post("/api/v1/tasks/", BODY, format="json"))
    assert Task.objects.count() == 0


def test_reads_are_not_counted(limit, user):
    api = api_for(user)
    for _ in range(LIMIT + 2):
        assert api.get("/api/v1/tasks/").status_code == HTTPStatus.OK
    assert api.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED


# --- The count is a row in the database, not in a process's memory -------------------------------------


def test_the_count_is_one_row_per_submitter_and_window(limit, user, clock):
    api = api_for(user)
    for _ in range(LIMIT + 1):
        api.post("/api/v1/tasks/", BODY, format="json")
    clock.advance(50)  # the next minute
    api.post("/api/v1/tasks/", BODY, format="json")
    noon = int(NOON.timestamp()) // 60 * 60
    assert list(
        SubmitCount.objects.order_by("window_end").values_list("submitter", "window_end", "count")
    ) == [
        (f"user:{user.pk}", noon + 60, LIMIT),  # the refused submit is not counted
        (f"user:{user.pk}", noon + 120, 1),
    ]


def test_a_counted_submit_is_one_update_and_a_refused_one_two_statements(limit):
    def statements() -> list[str]:
        with CaptureQueriesContext(connection) as queries, contextlib.suppress(Throttled):
            submit_limit.submit_claim(user=None, address="10.0.0.9")
        return [q["sql"].split()[0] for q in queries if "submitcount" in q["sql"]]

    assert statements()[-1] == "INSERT"  # the window's first submit makes its row
    for _ in range(LIMIT - 1):
        assert statements() == ["UPDATE"]
    assert statements() == ["UPDATE", "SELECT"]  # full: refused without an INSERT


@pytest.mark.parametrize("made_after", ["UPDATE", "SELECT"])
def test_two_first_submits_at_once_make_one_row(limit, made_after):
    """A first submit that meets the row a concurrent first submit made after its UPDATE looked (its SELECT
    reads it) or after its SELECT looked (its INSERT meets it) counts itself with the UPDATE, not refused."""
    made = []

    def concurrent_first_submit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith(made_after) and "submitcount" in sql and not made:  # no row yet: now there is one
            made.append(True)
            window_end = int(NOON.timestamp()) // 60 * 60 + 60
            SubmitCount.objects.create(submitter="addr:10.0.0.9", window_end=window_end, count=1)
        return result

    with connection.execute_wrapper(concurrent_first_submit):
        submit_limit.submit_claim(user=None, address="10.0.0.9")
    assert made and SubmitCount.objects.get().count == 2


def test_the_retention_job_deletes_the_counts_of_ended_windows(limit, clock):
    submit_limit.submit_claim(user=None, address="10.0.0.9")
    clock.advance(50)  # the next minute
    submit_limit.submit_claim(user=None, address="10.0.0.10")
    assert jobs.retention_job() == "0 task(s) purged, 1 ended submit count(s) deleted"
    assert list(SubmitCount.objects.values_list("submitter", flat=True)) == ["addr:10.0.0.10"]
    assert jobs.retention_job() == "0 task(s) purged"


def test_the_cache_is_shared_by_every_process():
    """Redis when a URL is set, else the database: never a process's memory (Django's default). The submit
    limit no longer counts there, but the completion slots do (generation.cache_slots)."""
    assert isinstance(caches["default"], DatabaseCache | RedisCache)


def test_migrate_makes_the_cache_table():
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE t2i_cache")  # in this test's transaction: rolled back after it
    assert "t2i_cache" not in connection.introspection.table_names()
    call_command("migrate", verbosity=0)
    assert "t2i_cache" in connection.introspection.table_names()


# A submitting process: opens the parent's test database, says "ready", waits for "go" so that all start
# together, then claims `tries` submits for one address, `step` seconds apart (0: at one instant; 60: each in
# a window of its own, so every one races the others' first submit of that window), and prints how many were
# allowed.
CHILD = """
import json, os, sys
from datetime import datetime
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = os.environ["T2I_CHILD_DB_NAME"]
django.setup()
from generation.exceptions import Throttled
from generation.services.submit_limit import submit_claim

from datetime import timedelta
start, step = datetime.fromisoformat(sys.argv[1]), timedelta(seconds=int(sys.argv[3]))
print("ready", flush=True)
sys.stdin.readline()
allowed = 0
for n in range(int(sys.argv[2])):
    try:
        submit_claim(user=None, address="10.0.0.77", now=start + n * step)
        allowed += 1
    except Throttled:
        pass
print(json.dumps(allowed), flush=True)
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("rate", "tries", "step", "expected"), [("7/min", 6, 0, 7), ("1/min", 30, 60, 30)])
def test_the_limit_holds_across_processes(rate, tries, step, expected):
    """Four processes submitting at once for one client get exactly the limit through between them: 7 of 24
    in one window; one in each of 30 windows whose first submits all four race (none refused for meeting
    another's new row, none let through twice). On SQLite and, in the PostgreSQL pass, on PostgreSQL."""
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "t2i_project.settings_test",
        "T2I_CHILD_DB_NAME": str(connection.settings_dict["NAME"]),
        "T2I_SUBMIT_RATE": rate,
        "LOG_LEVEL": "WARNING",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, NOON.isoformat(), str(tries), str(step)],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        allowed = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    finally:
        for child in children:
            child.kill()
        SubmitCount.objects.all().delete()
    assert sum(allowed) == expected, allowed


# --- Redis ----------------------------------------------------------------------------------------------


def redis_cache(location: str) -> dict:
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": f"t2i-test-{uuid.uuid4().hex}",  # nothing shared with other runs
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }


def test_with_redis_the_count_is_still_in_the_database(limit, settings, user):
    """Redis is the broker (and the completion slots' cache), not where submits are counted: a silent Redis
    does not stop submits."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings.CACHES = redis_cache(f"redis://127.0.0.1:{port}/0")  # nothing listens there
    api = api_for(user)
    for _ in range(LIMIT):
        assert api.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED
    assert_throttled(api.post("/api/v1/tasks/", BODY, format="json"))
    assert SubmitCount.objects.get().count == LIMIT


@pytest.mark.django_db(transaction=True)  # autocommit, as in a server: one failed statement spoils no other
def test_a_database_that_does_not_answer_the_count_refuses_the_submit(limit, user, client_for):
    def count_fails(execute, sql, params, many, context):
        if "submitcount" in sql:
            raise OperationalError("canceling statement due to statement timeout")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count_fails):
        response = api_for(user).post("/api/v1/tasks/", BODY, format="json")
        page = client_for(user).post(reverse("web:generate"), form_data())

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["error"] == "unavailable" and response["Retry-After"] == "2"
    assert page.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert page.context["form"].non_field_errors() == [
        "The submit limit cannot be checked just now; retry shortly."
    ]
    assert Task.objects.count() == 0


def test_one_redis_url_for_the_cache_and_the_broker_with_the_old_name_kept():
    show = "c = s.CACHES['default']; print(c['BACKEND'], c.get('LOCATION'), s.Q_CLUSTER.get('redis'))"
    key = {"SECRET_KEY": "k" * 50}
    url = "redis://10.0.0.3:6379/1"
    assert settings_in_subprocess(key | {"T2I_REDIS_URL": url}, show).stdout.split() == [
        "django_redis.cache.RedisCache",
        url,
        url,
    ]
    assert settings_in_subprocess(key | {"Q_REDIS_URL": url}, show).stdout.split() == [
        "django_redis.cache.RedisCache",
        url,
        url,
    ]
    assert settings_in_subprocess(key, show).stdout.split() == [
        "django.core.cache.backends.db.DatabaseCache",
        "t2i_cache",
        "None",
    ]
    both = settings_in_subprocess(key | {"T2I_REDIS_URL": url, "Q_REDIS_URL": "redis://other/0"}, show)
    assert "T2I_REDIS_URL and Q_REDIS_URL (its old name) differ" in both.stderr


def test_the_rate_and_the_proxies_come_from_the_environment():
    show = "print(s.T2I['SUBMIT_RATE'], s.T2I['TRUSTED_PROXIES'])"
    key = {"SECRET_KEY": "k" * 50}
    assert settings_in_subprocess(key, show).stdout.strip() == "(120, 60) 0"
    env = key | {"T2I_SUBMIT_RATE": "30/hour", "T2I_TRUSTED_PROXIES": "2"}
    assert settings_in_subprocess(env, show).stdout.strip() == "(30, 3600) 2"
    env = key | {"T2I_TRUSTED_PROXIES": "10.0.0.5, fd00::/8"}
    assert settings_in_subprocess(env, show).stdout.strip() == "(120, 60) ['10.0.0.5', 'fd00::/8']"
    bad_rate = settings_in_subprocess(key | {"T2I_SUBMIT_RATE": "lots"}, "")
    assert "T2I_SUBMIT_RATE='lots' is not a rate" in bad_rate.stderr
    bad_proxy = settings_in_subprocess(key | {"T2I_TRUSTED_PROXIES": "the-proxy"}, "")
    assert "T2I_TRUSTED_PROXIES: 'the-proxy' is not an IP network" in bad_proxy.stderr


# --- The client address: X-Forwarded-For only from trusted proxies -------------------------------------


def test_rotating_x_forwarded_for_does_not_bypass_the_limit(anonymous_submit):
    client = APIClient(REMOTE_ADDR="10.0.0.66")
    answers = [
        client.post("/api/v1/tasks/", BODY, format="json", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code
        for n in range(10)
    ]
    assert answers == [HTTPStatus.CREATED] * LIMIT + [HTTPStatus.TOO_MANY_REQUESTS] * (10 - LIMIT)
    # The form and /generate count the same address.
    assert_throttled(client.post("/generate", BODY, format="json", HTTP_X_FORWARDED_FOR="203.0.113.1"))
    page = Client(REMOTE_ADDR="10.0.0.66").post(reverse("web:generate"), form_data())
    assert page.status_code == HTTPStatus.TOO_MANY_REQUESTS
    # Another machine has its own count.
    other = APIClient(REMOTE_ADDR="10.0.0.67")
    assert other.post("/api/v1/tasks/", BODY, format="json").status_code == HTTPStatus.CREATED
    assert Task.objects.count() == LIMIT + 1


def test_behind_a_trusted_proxy_each_client_has_its_count(anonymous_submit, settings):
    settings.T2I = {**settings.T2I, "TRUSTED_PROXIES": 1}
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")

    def post(forwarded: str) -> int:
        return proxy.post("/api/v1/tasks/", BODY, format="json", HTTP_X_FORWARDED_FOR=forwarded).status_code

    # The proxy appends the address it saw; what the client wrote before it (its own "X-Forwarded-For") is
    # not believed.
    assert [post(f"198.51.100.{n}, 192.168.1.10") for n in range(LIMIT + 1)] == [
        HTTPStatus.CREATED
    ] * LIMIT + [HTTPStatus.TOO_MANY_REQUESTS]
    assert post("192.168.1.11") == HTTPStatus.CREATED


def test_anonymous_ipv6_submits_count_per_64(anonymous_submit):
    def post(address: str) -> int:
        return APIClient(REMOTE_ADDR=address).post("/api/v1/tasks/", BODY, format="json").status_code

    assert [post(f"2001:db8:0:1::{n:x}") for n in range(1, LIMIT + 2)][-1] == HTTPStatus.TOO_MANY_REQUESTS
    assert post("2001:db8:0:2::1") == HTTPStatus.CREATED  # another /64, another machine


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded", "client"),
    [
        (0, "10.0.0.66", "", "10.0.0.66"),
        (0, "10.0.0.66", "1.2.3.4", "10.0.0.66"),  # off: the header is ignored
        (0, "::ffff:10.0.0.66", "", "10.0.0.66"),  # a dual-stack socket's IPv4 client
        (1, "10.0.0.2", "1.2.3.4, 192.168.1.10", "192.168.1.10"),  # the entry the proxy appended
        (1, "10.0.0.2", "", "10.0.0.2"),  # no entry: not through the proxy
        (1, "10.0.0.2", "1.2.3.4, not-an-address", "10.0.0.2"),
        (2, "10.0.0.2", "1.2.3.4, 192.168.1.10, 10.0.0.1", "192.168.1.10"),
        (2, "10.0.0.2", "192.168.1.10", "10.0.0.2"),  # fewer entries than proxies
        (["10.0.0.0/24"], "10.0.0.2", "1.2.3.4, 192.168.1.10, 10.0.0.1", "192.168.1.10"),
        (["10.0.0.0/24"], "192.168.1.99", "1.2.3.4", "192.168.1.99"),  # not from a proxy: ignored
        (["10.0.0.0/24"], "10.0.0.2", "10.0.0.1", "10.0.0.1"),  # only proxies: the last one known
        (["10.0.0.0/24"], "10.0.0.2", "1.2.3.4, junk", "10.0.0.2"),
        (["fd00::/8"], "fd00::1", "2001:db8::7", "2001:db8::7"),
    ],
)
def test_the_client_address_rule(settings, trusted, remote, forwarded, client):
    settings.T2I = {**settings.T2I, "TRUSTED_PROXIES": trusted}
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    assert client_address(RequestFactory().get("/", REMOTE_ADDR=remote, **headers)) == client


# --- The login lockout uses the same address ------------------------------------------------------------


def test_the_login_lockout_ignores_x_forwarded_for_without_trusted_proxies(user, settings):
    settings.T2I = {**settings.T2I, "TRUSTED_PROXIES": 0}
    attacker = Client(REMOTE_ADDR="10.0.0.66")
    for n in range(5):
        sign_in(attacker, "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
    locked = sign_in(attacker, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.200")
    assert locked.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.0.0.66"}


def test_the_login_lockout_follows_trusted_proxies(user, settings):
    settings.T2I = {**settings.T2I, "TRUSTED_PROXIES": ["10.0.0.0/24"]}
    proxy = Client(REMOTE_ADDR="10.0.0.2")
    for _ in range(5):
        sign_in(proxy, "wrong", HTTP_X_FORWARDED_FOR="1.1.1.1, 192.168.1.66")
    assert sign_in(proxy, PASSWORD, HTTP_X_FORWARDED_FOR="192.168.1.66").status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"192.168.1.66"}
    # Another client behind the same proxy is not locked out.
    colleague = Client(REMOTE_ADDR="10.0.0.2")
    assert sign_in(colleague, PASSWORD, HTTP_X_FORWARDED_FOR="192.168.1.7").status_code == HTTPStatus.FOUND

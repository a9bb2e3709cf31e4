"""On PostgreSQL the hot path's statements are prepared per connection, not parsed and planned per call."""

import pytest
from django.db import connection

from generation import services
from tests.conftest import make_worker, submit_task

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_the_lease_statement_is_prepared_after_its_second_run():
    worker, _token = make_worker()
    worker.prefetch = 3  # deep enough to hold the three
    for _ in range(3):
        submit_task(prompt="a fox", template="noise-test")
    for _ in range(3):
        assert services.task_lease_next(worker=worker) is not None

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("FOR UPDATE SKIP LOCKED" in statement for statement in prepared), prepared

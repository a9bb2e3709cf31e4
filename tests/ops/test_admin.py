"""One smoke test per admin page and per action; the actions go through the services."""

import re
from http import HTTPStatus

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import dateformat, timezone

from generation import dashboard, services
from generation.models import Image, Task, UserShare, WebhookDelivery, WorkflowTemplate
from tests.conftest import CHECKPOINT, capabilities, make_worker
from tests.factories import TaskFactory
from tests.ops.conftest import run
from workers_app.models import Worker, WorkerSpeed, hash_token

pytestmark = pytest.mark.django_db


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def act(client, model: str, action: str, pks, follow=True):
    return client.post(
        reverse(f"admin:{model}_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=follow,
    )


# --- Pages ----------------------------------------------------------------------------------------------


def test_admin_index_links_the_dashboard(admin_client):
    response = admin_client.get(reverse("admin:index"))
    assert response.status_code == HTTPStatus.OK
    assert reverse("admin:generation_dashboard") in response.content.decode()


def test_worker_changelist_shows_live_figures(admin_client, worker, django_capture_on_commit_callbacks):
    TaskFactory()
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        run(worker)
    TaskFactory()
    running = services_lease(worker)
    response = admin_client.get(reverse("admin:workers_app_worker_changelist"))
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert worker.name in html and "Busy" in html
    assert "Simulated GPU · 8 GiB" in html and "0.3.64" in html
    assert str(running.public_id)[:8] in html  # the current task
    row = response.context["cl"].result_list[0]
    assert row.done_today == 1 and row.failed_today == 0 and dashboard.failure_rate(row) == 0.0
    assert row.median_run is not None


def services_lease(worker) -> Task:
    from generation import services

    return services.task_lease_next(worker=worker).task


def test_worker_changelist_filters_by_the_state_it_shows(admin_client, worker):
    """Busy is an idle worker holding a lease: the filter finds it under busy, not under idle."""
    make_worker("gpu-free")
    TaskFactory()
    services.task_lease_next(worker=worker)
    url = reverse("admin:workers_app_worker_changelist")
    busy = admin_client.get(url, {"status": "busy"})
    idle = admin_client.get(url, {"status": "idle"})
    assert [w.name for w in busy.context["cl"].result_list] == [worker.name]
    assert [w.name for w in idle.context["cl"].result_list] == ["gpu-free"]
    assert ">Busy<" in busy.content.decode()


def test_worker_changelist_queries_do_not_grow_with_rows(admin_client, django_assert_max_num_queries):
    for i in range(3):
        make_worker(f"gpu-{i}")
    with django_assert_max_num_queries(14):
        admin_client.get(reverse("admin:workers_app_worker_changelist"))
    for i in range(3, 15):
        make_worker(f"gpu-{i}")
    with django_assert_max_num_queries(14):
        response = admin_client.get(reverse("admin:workers_app_worker_changelist"))
    assert len(response.context["cl"].result_list) == 15


def test_worker_changelist_flags_version_skew(admin_client):
    make_worker("gpu-1")
    make_worker("gpu-2")
    odd = capabilities() | {"comfyui_version": "0.2.0"}
    make_worker("gpu-3", caps=odd)
    response = admin_client.get(reverse("admin:workers_app_worker_changelist"))
    html = response.content.decode()
    assert "ComfyUI 0.2.0 (most run 0.3.64)" in html
    assert html.count("⚠") == 1


def test_worker_change_page_shows_capabilities(admin_client, worker):
    response = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk]))
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert CHECKPOINT in html and "KSampler" in html and "Raw JSON" in html
    assert 'name="name"' in html and 'name="status"' not in html


def test_worker_change_saves_only_the_name(admin_client, worker):
    Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DRAINING)
    response = admin_client.post(
        reverse("admin:workers_app_worker_change", args=[worker.pk]), {"name": "gpu-renamed"}
    )
    assert response.status_code == HTTPStatus.FOUND
    worker.refresh_from_db()
    assert worker.name == "gpu-renamed" and worker.status == Worker.Status.DRAINING


def shown_tokens(response) -> list[str]:
    """The tokens of the one-time token page."""
    html = response.content.decode()
    return [part.split(">", 1)[1].split("<", 1)[0] for part in html.split('<code class="worker-token"')[1:]]


def assert_token_kept_nowhere(client, response, token: str) -> None:
    """Shown once, uncached, and in no cookie or session (only its hash is stored)."""
    assert "no-store" in response["Cache-Control"]
    assert all(token not in morsel.value for morsel in response.cookies.values())
    assert all(token not in morsel.value for morsel in client.cookies.values())
    assert token not in str(dict(client.session))
    assert not texts(response)


def test_worker_add_shows_the_token_once_and_stores_its_hash(admin_client):
    page = admin_client.get(reverse("admin:workers_app_worker_add"))
    assert page.status_code == HTTPStatus.OK and "token_hash" not in page.content.decode()
    response = admin_client.post(reverse("admin:workers_app_worker_add"), {"name": "gpu-new"})
    assert response.status_code == HTTPStatus.OK
    worker = Worker.objects.get(name="gpu-new")
    [token] = shown_tokens(response)
    assert worker.token_hash == hash_token(token) and token not in (worker.token_hash, worker.token_hint)
    assert worker.token_hint == token[:4]  # enough to tell tokens apart, too little to help a guess
    assert_token_kept_nowhere(admin_client, response, token)
    assert (
        token
        not in admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk])).content.decode()
    )


@pytest.mark.parametrize(
    ("action", "status"),
    [("drain", Worker.Status.DRAINING), ("disable", Worker.Status.DISABLED)],
)
def test_worker_state_actions(admin_client, worker, action, status):
    response = act(admin_client, "workers_app_worker", action, [worker.pk])
    assert response.status_code == HTTPStatus.OK
    worker.refresh_from_db()
    assert worker.status == status
    assert any("1 worker(s)" in m for m in texts(response))


def test_worker_enable_action_undrains(admin_client, worker):
    Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DRAINING)
    act(admin_client, "workers_app_worker", "enable", [worker.pk])
    worker.refresh_from_db()
    assert worker.status == Worker.Status.IDLE


def test_worker_disable_requeues_its_task(admin_client, worker):
    task = TaskFactory()
    services_lease(worker)
    act(admin_client, "workers_app_worker", "disable", [worker.pk])
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED and task.worker is None


def test_worker_rotate_token_action(admin_client, worker_and_token):
    worker, old = worker_and_token
    response = act(admin_client, "workers_app_worker", "rotate_token", [worker.pk], follow=False)
    worker.refresh_from_db()
    [new] = shown_tokens(response)
    assert worker.token_hash == hash_token(new) != hash_token(old)
    assert_token_kept_nowhere(admin_client, response, new)


def test_worker_rotate_token_button_on_its_page(admin_client, worker_and_token):
    worker, old = worker_and_token
    url = reverse("admin:workers_app_worker_object_action", args=[worker.pk, "rotate_token"])
    response = admin_client.post(url)
    worker.refresh_from_db()
    [new] = shown_tokens(response)
    assert worker.token_hash == hash_token(new) != hash_token(old)
    assert_token_kept_nowhere(admin_client, response, new)


def test_task_changelist_filters_and_search(admin_client, worker, user):
    TaskFactory(owner=user, prompt="a red fox in snow")
    TaskFactory(prompt="a blue whale")
    url = reverse("admin:generation_task_changelist")
    response = admin_client.get(url)
    assert response.status_code == HTTPStatus.OK
    assert "a red fox" in response.content.decode()
    for query in (
        {"q": "fox"},
        {"status__exact": "queued"},
        {"owner__id__exact": user.pk},
        {"worker__id__exact": worker.pk},
        {"checkpoint": CHECKPOINT},
        {"created_at__gte": "2000-01-01 00:00:00+00:00"},
    ):
        page = admin_client.get(url, query)
        assert page.status_code == HTTPStatus.OK, query
        assert "?e=1" not in page.get("Location", ""), query
    assert [t.prompt for t in admin_client.get(url, {"q": "fox"}).context["cl"].result_list] == [
        "a red fox in snow"
    ]
    task = Task.objects.get(prompt="a blue whale")
    found = admin_client.get(url, {"q": str(task.public_id)}).context["cl"].result_list
    assert list(found) == [task]


def test_task_changelist_has_no_n_plus_one(admin_client, worker, user, django_assert_max_num_queries):
    for _ in range(3):
        TaskFactory(owner=user)
    with django_assert_max_num_queries(12):
        admin_client.get(reverse("admin:generation_task_changelist"))
    for _ in range(20):
        TaskFactory(owner=user)
    with django_assert_max_num_queries(12):
        response = admin_client.get(reverse("admin:generation_task_changelist"))
    assert len(response.context["cl"].result_list) == 23


def test_task_change_page_shows_attempts_and_thumbnails(
    admin_client, worker, django_capture_on_commit_callbacks
):
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        task = run(worker)
    image = Image.objects.get(task=task)
    assert image.thumbnail
    response = admin_client.get(reverse("admin:generation_task_change", args=[task.pk]))
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert image.thumbnail.url in html
    assert "Attempts (leases)" in html and "Completed" in html
    assert 'type="submit" value="Save"' not in html  # view-only


def test_task_cancel_action(admin_client, worker):
    task = TaskFactory()
    response = act(admin_client, "generation_task", "cancel", [task.pk])
    task.refresh_from_db()
    assert task.status == Task.Status.CANCELLED
    assert "1 task(s) cancelled." in texts(response)


def test_task_retry_action_and_error_message(admin_client, worker):
    queued = TaskFactory()
    failed = TaskFactory()
    Task.objects.filter(pk=failed.pk).update(status=Task.Status.FAILED, error_code="x")
    response = act(admin_client, "generation_task", "retry", [queued.pk, failed.pk])
    failed.refresh_from_db()
    assert failed.status == Task.Status.QUEUED
    messages = texts(response)
    assert "1 task(s) requeued." in messages
    assert any(str(queued.public_id) in m and "Only failed or cancelled" in m for m in messages)


def test_task_raise_priority_action(admin_client, worker):
    low = TaskFactory(priority=3)
    high = TaskFactory(priority=995)
    response = act(admin_client, "generation_task", "raise_priority", [low.pk, high.pk])
    low.refresh_from_db()
    high.refresh_from_db()
    assert (low.priority, high.priority) == (13, 995)
    messages = texts(response)
    assert "1 task(s) raised by 10." in messages
    assert any(str(high.public_id) in m and "Priority must be from -1000 to 1000" in m for m in messages)


def test_dashboard_page(admin_client, worker, django_capture_on_commit_callbacks):
    TaskFactory(priority=5)
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        run(worker)
    TaskFactory()
    services_lease(worker)
    response = admin_client.get(reverse("admin:generation_dashboard"))
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert "Farm dashboard" in html and "Worker utilisation" in html and worker.name in html
    figures = response.context["figures"]
    assert figures.completed_last_hour == 1 and figures.queue_by_priority == [(0, 1)]


def test_dashboard_needs_staff(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:generation_dashboard"))
    assert response.status_code == HTTPStatus.FOUND and "/login/" in response["Location"]


def test_image_pages(admin_client, worker, django_capture_on_commit_callbacks):
    TaskFactory()
    with django_capture_on_commit_callbacks(execute=True):
        task = run(worker)
    image = Image.objects.get(task=task)
    listing = admin_client.get(reverse("admin:generation_image_changelist"))
    assert listing.status_code == HTTPStatus.OK
    assert image.thumbnail.url in listing.content.decode()
    assert reverse("admin:generation_task_change", args=[task.pk]) in listing.content.decode()
    detail = admin_client.get(reverse("admin:generation_image_change", args=[image.pk]))
    assert detail.status_code == HTTPStatus.OK and image.sha256 in detail.content.decode()
    assert admin_client.get(reverse("admin:generation_image_add")).status_code == HTTPStatus.FORBIDDEN


def test_template_pages(admin_client, worker):
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    listing = admin_client.get(reverse("admin:generation_workflowtemplate_changelist"))
    assert listing.status_code == HTTPStatus.OK
    assert "1 of 1" in listing.content.decode()
    change = admin_client.get(reverse("admin:generation_workflowtemplate_change", args=[template.pk]))
    html = change.content.decode()
    assert change.status_code == HTTPStatus.OK
    assert "  &quot;4&quot;: {" in html  # pretty-printed
    assert "monospace" in html and worker.name in html
    assert admin_client.get(reverse("admin:generation_workflowtemplate_add")).status_code == HTTPStatus.OK


def test_template_validation_errors_show_inline(admin_client):
    response = admin_client.post(
        reverse("admin:generation_workflowtemplate_add"),
        {
            "name": "broken",
            "description": "",
            "workflow": '{"1": {"class_type": "KSampler"}}',
            "bindings": "{}",
        },
    )
    assert response.status_code == HTTPStatus.OK
    errors = response.context["adminform"].form.errors
    assert "no output node" in str(errors["workflow"])
    bad_json = admin_client.post(
        reverse("admin:generation_workflowtemplate_add"),
        {"name": "broken", "description": "", "workflow": "{not json", "bindings": "{}"},
    )
    assert "workflow" in bad_json.context["adminform"].form.errors
    assert "{not json" in bad_json.content.decode()
    assert not WorkflowTemplate.objects.filter(name="broken").exists()


def test_template_check_against_workers_action(admin_client):
    make_worker("gpu-full")
    make_worker(
        "gpu-noise-only",
        caps=capabilities(checkpoints=[], nodes=["EmptyImage", "ImageAddNoise", "SaveImage"]),
    )
    sd15 = WorkflowTemplate.objects.get(name="sd15-txt2img")
    noise = WorkflowTemplate.objects.get(name="noise-test")
    response = act(
        admin_client,
        "generation_workflowtemplate",
        "check_against_workers",
        [sd15.pk, noise.pk],
        follow=False,
    )
    assert response.status_code == HTTPStatus.OK
    html = response.content.decode()
    assert (
        "missing nodes: CLIPTextEncode, CheckpointLoaderSimple, EmptyLatentImage, KSampler, VAEDecode" in html
    )
    rows = dict(response.context["rows"])
    assert [f.ok for f in rows[noise]] == [True, True]
    assert [(f.worker.name, f.ok) for f in rows[sd15]] == [("gpu-full", True), ("gpu-noise-only", False)]
    assert rows[sd15][1].checkpoint == "any (chosen per task)" and not rows[sd15][1].has_checkpoint


def test_webhook_delivery_pages_and_send_now(admin_client, worker, settings, monkeypatch):
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: None)
    task = TaskFactory(callback_url="http://127.0.0.1:9/hook")
    delivery = WebhookDelivery.objects.create(
        task=task, url=task.callback_url, event="task.failed", payload={"event": "task.failed"}, attempts=5
    )
    listing = admin_client.get(reverse("admin:generation_webhookdelivery_changelist"), {"state": "gave_up"})
    assert listing.status_code == HTTPStatus.OK and "gave up" in listing.content.decode()
    detail = admin_client.get(reverse("admin:generation_webhookdelivery_change", args=[delivery.pk]))
    assert detail.status_code == HTTPStatus.OK and "task.failed" in detail.content.decode()
    act(admin_client, "generation_webhookdelivery", "send_now", [delivery.pk])
    delivery.refresh_from_db()
    assert delivery.next_try_at is not None and delivery.state == "pending"


def test_object_action_buttons_on_the_task_page(admin_client, worker):
    task = TaskFactory()
    page = admin_client.get(reverse("admin:generation_task_change", args=[task.pk]))
    cancel_url = reverse("admin:generation_task_object_action", args=[task.pk, "cancel"])
    assert cancel_url in page.content.decode()
    response = admin_client.post(cancel_url, follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:generation_task_change", args=[task.pk])
    task.refresh_from_db()
    assert task.status == Task.Status.CANCELLED
    assert "1 task(s) cancelled." in texts(response)
    again = admin_client.post(cancel_url, follow=True)
    assert any("already cancelled" in m for m in texts(again))


def test_object_action_buttons_on_the_worker_page(admin_client, worker):
    page = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk]))
    drain_url = reverse("admin:workers_app_worker_object_action", args=[worker.pk, "drain"])
    assert drain_url in page.content.decode()
    admin_client.post(drain_url)
    worker.refresh_from_db()
    assert worker.status == Worker.Status.DRAINING


def test_object_actions_refuse_get_and_unknown_actions(admin_client, worker):
    task = TaskFactory()
    url = reverse("admin:generation_task_object_action", args=[task.pk, "cancel"])
    assert admin_client.get(url).status_code == HTTPStatus.FORBIDDEN
    bad = reverse("admin:generation_task_object_action", args=[task.pk, "delete_selected"])
    assert admin_client.post(bad).status_code == HTTPStatus.FORBIDDEN
    task.refresh_from_db()
    assert task.status == Task.Status.QUEUED


def test_worker_change_page_shows_learned_costs(admin_client, worker):
    WorkerSpeed.objects.create(
        worker=worker, checkpoint=CHECKPOINT, seconds_per_unit=2.0 / 5242880, samples=7
    )
    Worker.objects.filter(pk=worker.pk).update(
        switch_seconds=4.5, switch_samples=3, warm_checkpoint=CHECKPOINT
    )
    html = admin_client.get(reverse("admin:workers_app_worker_change", args=[worker.pk])).content.decode()
    assert "Learned costs" in html and "2.0 s" in html and "4.5 s (3 switches)" in html


def test_share_weight_is_set_in_the_admin_without_touching_usage(admin_client, user):
    share = UserShare.objects.create(user=user, weight=1.0, usage_seconds=10.0)
    url = reverse("admin:generation_usershare_change", args=[share.pk])
    assert admin_client.get(url).status_code == HTTPStatus.OK
    UserShare.objects.filter(pk=share.pk).update(usage_seconds=99.0)  # a completion meanwhile
    response = admin_client.post(url, {"weight": "3"})
    assert response.status_code == HTTPStatus.FOUND
    share.refresh_from_db()
    assert share.weight == 3.0 and share.usage_seconds == 99.0
    assert admin_client.post(url, {"weight": "0"}).status_code == HTTPStatus.OK  # refused: must be > 0
    share.refresh_from_db()
    assert share.weight == 3.0


def test_task_page_offers_only_the_actions_that_apply(admin_client, worker):
    def buttons(task: Task) -> set[str]:
        html = admin_client.get(reverse("admin:generation_task_change", args=[task.pk])).content.decode()
        return {
            name
            for name in ("cancel", "retry", "raise_priority")
            if reverse("admin:generation_task_object_action", args=[task.pk, name]) in html
        }

    task = TaskFactory()
    assert buttons(task) == {"cancel", "raise_priority"}
    completed = run(worker)
    assert completed.pk == task.pk and completed.status == Task.Status.COMPLETED
    assert buttons(completed) == set()
    failed_task = TaskFactory()
    failed = run(worker, complete=False)
    assert failed.pk == failed_task.pk and failed.status == Task.Status.FAILED
    assert buttons(failed) == {"retry"}
    leased = TaskFactory()
    services.task_lease_next(worker=worker)
    assert buttons(leased) == {"cancel"}


def test_attempt_history_shows_seconds(admin_client, worker):
    TaskFactory()
    task = run(worker)
    attempt = task.attempt_set.get()
    html = admin_client.get(reverse("admin:generation_task_change", args=[task.pk])).content.decode()
    for stamp in (attempt.leased_at, attempt.started_at, attempt.finished_at):
        assert dateformat.format(timezone.localtime(stamp), "H:i:s") in html


def test_dashboard_shows_recent_throughput_a_time_axis_and_twelve_cards(admin_client, worker):
    TaskFactory()
    run(worker)
    response = admin_client.get(reverse("admin:generation_dashboard"))
    html = response.content.decode()
    labels = [label for label, _, _ in response.context["cards"]]
    assert "Throughput, last 5 min" in labels and "Throughput, hour average" in labels
    assert len(labels) == 12  # rows of 6, 4, 3 or 2 (dashboard.html): no card alone on a row
    ticks = response.context["ticks"]
    assert 6 <= len(ticks) <= 7 and all(tick["label"].endswith("0") for tick in ticks)
    assert f">{ticks[0]['label']}</span>" in html and 'class="farm-axis"' in html


def test_webhook_list_says_nothing_is_sent_without_a_secret(admin_client, settings):
    url = reverse("admin:generation_webhookdelivery_changelist")
    settings.T2I = {**settings.T2I, "WEBHOOK_SECRET": ""}
    assert "Nothing is sent" in admin_client.get(url).content.decode()
    settings.T2I = {**settings.T2I, "WEBHOOK_SECRET": "s3cret-for-the-test"}
    assert "Nothing is sent" not in admin_client.get(url).content.decode()


def test_console_names_itself_and_lists_the_farm_first(admin_client):
    response = admin_client.get(reverse("admin:index"))
    html = response.content.decode()
    assert "<title>Workers, tasks and images | Render farm console</title>" in html
    assert re.search(r'id="site-name">.*?Render farm console\s*</a>', html, re.S)
    assert "Django administration" not in html
    apps = [app["app_label"] for app in response.context["app_list"]]
    assert apps[:2] == ["workers_app", "generation"]
    assert apps.index("auth") < apps.index("axes") < apps.index("django_q")
    farm = next(app for app in response.context["app_list"] if app["app_label"] == "generation")
    assert [m["name"] for m in farm["models"]] == [
        "Tasks",
        "Images",
        "Workflow templates",
        "Webhook deliveries",
        "Farm dashboard",
        "API tokens",  # people's things after the farm's
        "Input images",
        "User shares",
    ]
    assert farm["models"][4]["admin_url"] == reverse("admin:generation_dashboard")

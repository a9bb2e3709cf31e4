"""The gallery: visibility, keyset pages (no duplicates, no gaps, both directions), search and filters."""

from datetime import timedelta
from http import HTTPStatus

import pytest
from django.template import Context, Template
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from generation import web_selectors
from generation.models import Image
from tests.web.conftest import complete_next, completed
from tests.web.test_generate import form_data

pytestmark = pytest.mark.django_db


def ids_on(response) -> list[int]:
    return [image.pk for image in response.context["page"].images]


def test_users_see_their_own_images_and_staff_see_all(
    alice, bob, client_for, staff, user, other_user, worker
):
    mine = completed(user, worker, prompt="alice's cat").images.get()
    theirs = completed(other_user, worker, prompt="bob's dog").images.get()
    assert ids_on(alice.get(reverse("web:gallery"))) == [mine.pk]
    assert ids_on(bob.get(reverse("web:gallery"))) == [theirs.pk]
    staff_client = client_for(staff)
    assert ids_on(staff_client.get(reverse("web:gallery"))) == [theirs.pk, mine.pk]
    page = alice.get(reverse("web:gallery")).content.decode()
    assert 'alt="alice&#x27;s cat"' in page
    assert mine.thumbnail.url in page
    assert reverse("web:image", kwargs={"image_id": mine.public_id}) in page


def test_missing_thumbnail_falls_back_to_the_original(alice, user, worker):
    image = completed(user, worker).images.get()
    Image.objects.filter(pk=image.pk).update(thumbnail="")
    page = alice.get(reverse("web:gallery")).content.decode()
    assert f'src="{image.file.url}"' in page


def test_keyset_pages_cover_every_image_once(alice, user, worker, monkeypatch):
    monkeypatch.setattr(web_selectors, "GALLERY_PAGE_SIZE", 3)
    for n in range(4):
        completed(user, worker, prompt=f"batch {n}", batch_size=2)  # 8 images
    expected = list(Image.objects.order_by("-id").values_list("pk", flat=True))
    assert len(expected) == 8

    seen, url, pages = [], reverse("web:gallery"), []
    while url:
        response = alice.get(url if url.startswith("/") else reverse("web:gallery") + url)
        pages.append(ids_on(response))
        seen += ids_on(response)
        url = response.context["older_url"]
    assert seen == expected  # newest first, nothing twice, nothing left out
    assert [len(p) for p in pages] == [3, 3, 2]

    # And back again with ?after= from the last page.
    last = alice.get(reverse("web:gallery") + f"?before={pages[1][-1]}")
    assert last.context["older_url"] == ""
    back = alice.get(reverse("web:gallery") + last.context["newer_url"])
    assert ids_on(back) == pages[1]
    first = alice.get(reverse("web:gallery") + back.context["newer_url"])
    assert ids_on(first) == pages[0] and first.context["newer_url"] == ""


def test_keyset_page_is_stable_while_new_images_arrive(alice, user, worker, monkeypatch):
    monkeypatch.setattr(web_selectors, "GALLERY_PAGE_SIZE", 2)
    for n in range(4):
        completed(user, worker, prompt=f"old {n}")
    first = alice.get(reverse("web:gallery"))
    completed(user, worker, prompt="brand new")
    second = alice.get(reverse("web:gallery") + first.context["older_url"])
    assert set(ids_on(first)).isdisjoint(ids_on(second))
    assert ids_on(second) == sorted(ids_on(second), reverse=True)
    assert max(ids_on(second)) < min(ids_on(first))


def test_search_in_prompt_text(alice, user, worker):
    fox = completed(user, worker, prompt="A red Fox in the snow").images.get()
    completed(user, worker, prompt="a lighthouse")
    response = alice.get(reverse("web:gallery") + "?q=fox")
    assert ids_on(response) == [fox.pk]
    assert 'value="fox"' in response.content.decode()
    empty = alice.get(reverse("web:gallery") + "?q=zebra")
    assert ids_on(empty) == [] and "No images match" in empty.content.decode()


def test_filter_by_checkpoint(alice, user, worker):
    from tests.conftest import capabilities
    from workers_app import services as worker_services

    worker_services.worker_register(
        worker=worker, capabilities=capabilities(checkpoints=("a.ckpt", "b.ckpt"))
    )
    worker.refresh_from_db()
    a = completed(user, worker, prompt="one", checkpoint="a.ckpt").images.get()
    completed(user, worker, prompt="two", checkpoint="b.ckpt")
    response = alice.get(reverse("web:gallery") + "?checkpoint=a.ckpt")
    assert ids_on(response) == [a.pk]
    assert '<option value="a.ckpt" selected>' in response.content.decode()


def test_filter_by_date_range(alice, user, worker):
    old = completed(user, worker, prompt="old").images.get()
    new = completed(user, worker, prompt="new").images.get()
    today = timezone.localdate()
    Image.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    since = (today - timedelta(days=1)).isoformat()
    until = (today - timedelta(days=5)).isoformat()
    assert ids_on(alice.get(reverse("web:gallery") + f"?date_from={since}")) == [new.pk]
    assert ids_on(alice.get(reverse("web:gallery") + f"?date_to={until}")) == [old.pk]
    assert ids_on(alice.get(reverse("web:gallery") + f"?date_from={today}&date_to={today}")) == [new.pk]
    # A malformed date filters nothing rather than failing.
    assert alice.get(reverse("web:gallery") + "?date_from=yesterday").status_code == HTTPStatus.OK


def test_staff_filter_mine(client_for, staff, user, worker):
    completed(user, worker, prompt="alice's")
    own = completed(staff, worker, prompt="staff's").images.get()
    staff_client = client_for(staff)
    assert ids_on(staff_client.get(reverse("web:gallery") + "?mine=on")) == [own.pk]


def test_filters_are_kept_in_page_links(alice, user, worker, monkeypatch):
    monkeypatch.setattr(web_selectors, "GALLERY_PAGE_SIZE", 1)
    completed(user, worker, prompt="fox one")
    completed(user, worker, prompt="fox two")
    completed(user, worker, prompt="cat")
    response = alice.get(reverse("web:gallery") + "?q=fox")
    older = response.context["older_url"]
    assert "q=fox" in older and "before=" in older
    second = alice.get(reverse("web:gallery") + older)
    assert [i.task.prompt for i in second.context["page"].images] == ["fox one"]
    assert second.context["older_url"] == ""


def test_the_anonymous_gallery_shows_only_what_this_browser_submitted(settings, user, worker):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    completed(user, worker, prompt="private")
    completed(None, worker, prompt="someone else's anonymous task")
    browser = Client()
    small = form_data(size="custom", width="64", height="64", batch_size="1")
    assert browser.post(reverse("web:generate"), small).status_code == HTTPStatus.FOUND
    mine = complete_next(worker).images.get()

    assert ids_on(browser.get(reverse("web:gallery"))) == [mine.pk]
    assert ids_on(Client().get(reverse("web:gallery"))) == []  # another browser: nothing


def test_odd_query_values_do_not_break_the_page(alice, user, worker):
    image = completed(user, worker).images.get()
    for query in (
        "?before=99999999999999999999999",
        "?after=-1",
        "?before=abc",
        "?date_to=9999-12-31",
        "?date_from=0001-01-01",
        "?checkpoint=%00",
        "?q=" + "x" * 500,
    ):
        response = alice.get(reverse("web:gallery") + query)
        assert response.status_code == HTTPStatus.OK, query
    assert ids_on(alice.get(reverse("web:gallery") + "?before=99999999999999999999999")) == [image.pk]
    assert alice.get(f"/images/{2**64}/").status_code == HTTPStatus.NOT_FOUND


# The grid as the template wrote it before gallery_thumbs worked its values out in Python.
TEMPLATE_GRID = """{% for image in page.images %}
      <li class="thumb">
        <a href="{% url 'web:image' image.public_id %}">
          <img src="{% if image.thumbnail %}{{ image.thumbnail.url }}{% else %}{{ image.file.url }}{% endif %}" alt="{{ image.task.prompt|truncatechars:200 }}" width="{{ image.width }}" height="{{ image.height }}" loading="lazy" decoding="async">
          <span class="thumb-caption">
            <span class="thumb-prompt">{{ image.task.prompt|truncatechars:90 }}</span>
            <time class="thumb-date" datetime="{{ image.created_at|date:'c' }}">{{ image.created_at|date:"j M, H:i" }}</time>
          </span>
        </a>
      </li>
    {% endfor %}"""  # noqa: E501


@pytest.mark.parametrize("time_zone", ["UTC", "America/St_Johns"])
def test_grid_markup_is_what_the_template_filters_made(alice, user, worker, settings, time_zone):
    settings.TIME_ZONE = time_zone
    prompts = [
        "short <b>ascii</b> & 'quotes'",
        "x" * 90,
        "y" * 91,
        "long " * 60,
        "Café crème brûlée, naïve façade — 夜の港町 " * 3,
        "e\u0301" * 95,  # combining accents: truncatechars counts them as nothing
    ]
    for prompt in prompts:
        completed(user, worker, prompt=prompt)
    Image.objects.filter(task__prompt=prompts[1]).update(thumbnail="")
    Image.objects.filter(task__prompt=prompts[2]).update(
        created_at=timezone.make_aware(timezone.datetime(2026, 1, 5, 3, 7, 9))
    )
    response = alice.get(reverse("web:gallery"))
    html = response.content.decode()
    old = Template(TEMPLATE_GRID).render(Context({"page": response.context["page"]}))
    grid = '<ul class="thumb-grid" aria-label="Images">'
    start = html.index(grid) + len(grid)
    assert html[start : html.index("</ul>", start)].strip() == old.strip()

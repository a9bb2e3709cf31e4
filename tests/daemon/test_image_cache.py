"""The worker's local image cache: plain names only, pruning by age and size, a folder it may own, copies
written on the side (a failed write is logged and forgotten)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from tests.daemon.fakes import wait_until
from workers_app.daemon.image_cache import (
    MARKER,
    BadFileName,
    CachedFile,
    CacheFolderError,
    ImageCache,
    is_plain_file_name,
    plan_prune,
)

HOUR = 3600.0


@pytest.mark.parametrize(
    "name", ["t2i_a1_00001_.png", "ComfyUI_00001_.webp", "x", "a b.png", "é.png", "a..b.png", "a" * 255]
)
def test_plain_file_names_are_accepted(name):
    assert is_plain_file_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "", ".", "..", "../secret.png", "/etc/passwd", "sub/a.png", "..\\a.png", "a\\b.png", ".hidden.png",
        MARKER, ".a.png.1234.tmp", "a\x00.png", "a\n.png", "a\x7f", "a" * 256,
    ],
)  # fmt: skip
def test_paths_and_hidden_or_odd_names_are_refused(name):
    assert not is_plain_file_name(name)


def test_plan_prune_drops_what_is_too_old_then_the_oldest_until_the_size_fits():
    now = 100 * HOUR
    files = [
        CachedFile("old.png", 10, now - 7 * HOUR),
        CachedFile("a.png", 40, now - 3 * HOUR),
        CachedFile("b.png", 40, now - 2 * HOUR),
        CachedFile("c.png", 40, now - 1 * HOUR),
    ]
    assert plan_prune(files, now=now, max_age=6 * HOUR, max_bytes=1000) == ["old.png"]
    assert sorted(plan_prune(files, now=now, max_age=6 * HOUR, max_bytes=80)) == ["a.png", "old.png"]
    assert plan_prune(files, now=now, max_age=100 * HOUR, max_bytes=130) == []
    assert plan_prune(files, now=now, max_age=100 * HOUR, max_bytes=129) == ["old.png"]
    assert plan_prune([CachedFile("huge.png", 500, now)], now=now, max_age=HOUR, max_bytes=100) == [
        "huge.png"
    ]


def open_cache(folder, **kwargs) -> ImageCache:
    cache = ImageCache(folder, **kwargs)
    cache.open()
    return cache


def test_a_new_folder_is_created_and_marked(tmp_path):
    cache = open_cache(tmp_path / "images")
    try:
        assert (tmp_path / "images" / MARKER).is_file()
    finally:
        cache.close()
    open_cache(tmp_path / "images").close()  # its own folder, with files in it, is taken again


def test_a_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(CacheFolderError, match="not a worker image cache"):
        ImageCache(tmp_path, max_age=0.001).open()
    assert (tmp_path / "holiday.jpg").read_bytes() == b"mine"


def test_write_then_open_file_and_prune_removes_expired_and_oversize(tmp_path):
    clock = [1000 * HOUR]
    cache = ImageCache(tmp_path, max_age=6 * HOUR, max_bytes=25, clock=lambda: clock[0])
    cache.folder.mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        cache.write(name, b"x" * 10)
    os.utime(tmp_path / "a.png", (clock[0] - 3, clock[0] - 3))
    os.utime(tmp_path / "b.png", (clock[0] - 2, clock[0] - 2))
    os.utime(tmp_path / "c.png", (clock[0] - 1, clock[0] - 1))
    size, file = cache.open_file("c.png")
    with file:
        assert (size, file.read()) == (10, b"x" * 10)
    assert cache.prune() == 1  # 30 bytes > 25: the oldest goes
    assert sorted(f.name for f in cache.files()) == ["b.png", "c.png"]
    clock[0] += 7 * HOUR
    assert cache.prune() == 2
    assert cache.files() == []


def test_open_file_refuses_paths_and_finds_only_regular_files_of_the_folder(tmp_path):
    folder = tmp_path / "images"
    cache = ImageCache(folder)
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(b"secret")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    (folder / "dir.png").mkdir()
    for bad in ("../secret.png", str(tmp_path / "secret.png"), ".."):
        with pytest.raises(BadFileName):
            cache.open_file(bad)
    for missing in ("link.png", "dir.png", "nothing.png"):
        with pytest.raises(FileNotFoundError):
            cache.open_file(missing)


def test_store_later_writes_on_the_writer_thread(tmp_path):
    cache = open_cache(tmp_path / "images")
    try:
        assert cache.store_later([("one.png", b"1"), ("two.png", b"22")])
        assert wait_until(lambda: len(cache.files()) == 2)
        assert (tmp_path / "images" / "two.png").read_bytes() == b"22"
    finally:
        cache.close()
    assert not cache.store_later([("late.png", b"3")])  # closed: dropped, never raised


def test_a_failing_write_is_logged_and_the_writer_goes_on(tmp_path, caplog):
    cache = open_cache(tmp_path / "images")
    try:
        with caplog.at_level(logging.WARNING, logger="workers_app.daemon.image_cache"):
            assert cache.store_later([("../escape.png", b"x"), ("ok.png", b"y")])
            assert wait_until(lambda: [f.name for f in cache.files()] == ["ok.png"])
        assert "could not keep a copy of '../escape.png'" in caplog.text
        assert not (tmp_path / "escape.png").exists()
    finally:
        cache.close()


def test_the_writer_prunes_periodically(tmp_path):
    clock = [time.time()]
    cache = open_cache(tmp_path / "images", max_age=HOUR, prune_every=0.05, clock=lambda: clock[0])
    try:
        cache.write("old.png", b"x")
        clock[0] += 2 * HOUR
        assert wait_until(lambda: cache.files() == [])
    finally:
        cache.close()

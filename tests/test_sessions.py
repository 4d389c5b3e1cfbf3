"""Login sessions from real utmp records (written with libc's pututxline), seen by inotify."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeagent.sessions import SessionSource
from nodeagent.utmp import RECORD_BYTES, Session, read_sessions, write_login, write_logout

from .helpers import wait_until


def test_records_written_as_login_does_are_read_back_and_agree_with_who(tmp_path: Path) -> None:
    utmp = tmp_path / "utmp"
    write_login(utmp, "alice", "tty7")
    write_login(utmp, "bob", "pts/3", host="lab3-pc12")
    assert [(s.user, s.line, s.host) for s in read_sessions(utmp)] == [
        ("alice", "tty7", ""),
        ("bob", "pts/3", "lab3-pc12"),
    ]
    who = shutil.which("who")
    if who is not None:  # coreutils reads the same records
        listed = subprocess.run([who, str(utmp)], capture_output=True, text=True, check=True)
        assert "alice" in listed.stdout and "bob" in listed.stdout
    write_logout(utmp, "tty7")
    assert [s.user for s in read_sessions(utmp)] == ["bob"]
    assert utmp.stat().st_size == 2 * RECORD_BYTES  # the logout reused alice's record


def test_a_missing_or_torn_file_reads_as_what_it_holds(tmp_path: Path) -> None:
    assert read_sessions(tmp_path / "absent") == []
    utmp = tmp_path / "utmp"
    write_login(utmp, "carol", "tty2")
    with utmp.open("ab") as torn:
        torn.write(b"\x07\x00" + b"\xff" * 100)  # half a record, as a crash could leave
    assert [s.user for s in read_sessions(utmp)] == ["carol"]


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[SessionSource, list[list[Session]]]]:
    seen: list[list[Session]] = []
    source = SessionSource(tmp_path / "utmp", seen.append)
    assert source.start() == []
    yield source, seen
    source.stop()


async def test_a_login_and_a_logout_are_reported_at_once(
    watched: tuple[SessionSource, list[list[Session]]],
) -> None:
    source, seen = watched
    write_login(source.utmp_path, "dave", "tty7")
    await wait_until(lambda: len(seen) == 1, timeout_s=5, what="the login")
    assert [s.user for s in seen[0]] == ["dave"]
    write_logout(source.utmp_path, "tty7")
    await wait_until(lambda: len(seen) == 2, timeout_s=5, what="the logout")
    assert seen[1] == []


async def test_a_replaced_file_is_seen_and_other_files_are_ignored(
    watched: tuple[SessionSource, list[list[Session]]], tmp_path: Path
) -> None:
    source, seen = watched
    (tmp_path / "unrelated").write_text("noise")
    staged = tmp_path / "utmp.new"
    write_login(staged, "erin", ":0")
    os.replace(staged, source.utmp_path)  # atomic replacement, as some tools do
    await wait_until(lambda: len(seen) == 1, timeout_s=5, what="the replaced file")
    assert [s.line for s in seen[0]] == [":0"]
    (tmp_path / "unrelated").write_text("more noise")
    await asyncio.sleep(0.1)
    assert len(seen) == 1


def flood_then_login(folder: Path, utmp: Path) -> None:
    """Without yielding to the loop (so nothing reads the queue): overflow it, then log in."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    names = [folder / "noise-a", folder / "noise-b"]  # alternating: never coalesced
    for index in range(limit + 100):
        names[index % 2].write_bytes(b"x")
    write_login(utmp, "frank", "tty7")


async def test_a_login_lost_in_an_inotify_overflow_is_seen(
    watched: tuple[SessionSource, list[list[Session]]], tmp_path: Path
) -> None:
    """More events than the kernel queues (fs.inotify.max_queued_events) land in the
    folder before the loop reads any, the login's among the dropped ones: the overflow
    itself makes the source read the file again."""
    source, seen = watched
    flood_then_login(tmp_path, source.utmp_path)
    await wait_until(lambda: len(seen) == 1, timeout_s=5, what="the login after the overflow")
    assert [s.user for s in seen[0]] == ["frank"]

"""How much of a replica's output is shipped, and how its output is read (no broker)."""

from __future__ import annotations

from pathlib import Path

from nodeagent.loglimit import Limiter, LogLimits, cut
from nodeagent.runtime.output import READ_MAX_BYTES, docker_output, read_file_output
from schemas import MAX_LINE_CHARS

LIMITS = LogLimits(lines_per_s=10, bytes_per_s=1000, burst_s=1.0)


def test_lines_within_the_rates_pass_and_a_flood_is_cut_with_one_marker() -> None:
    limiter = Limiter(LIMITS, now_s=0.0)
    assert [limiter.admit(f"line {i}", 0.0) for i in range(10)] == [
        (None, f"line {i}") for i in range(10)
    ]
    assert limiter.admit("one too many", 0.0) == (None, None)
    assert limiter.admit("and another", 0.0) == (None, None)
    marker, line = limiter.admit("after a second", 1.0)
    assert line == "after a second"
    assert marker is not None and marker.startswith("[idlecloud] 2+ lines (23 bytes)")
    assert "limit of 10 lines/s and 0.976562 KiB/s" in marker
    assert limiter.total_dropped_lines == 2


def test_the_byte_rate_cuts_long_lines_and_a_quiet_replica_still_gets_its_marker() -> None:
    limiter = Limiter(LIMITS, now_s=0.0)
    assert limiter.admit("x" * 600, 0.0)[1] is not None
    assert limiter.admit("x" * 600, 0.0) == (None, None)  # 400 bytes left of 1000
    marker = limiter.marker(0.0)  # it went quiet: the marker comes on its own
    assert marker is not None and "1+ lines (600 bytes)" in marker
    assert limiter.marker(0.1) is None  # said once
    for _ in range(20):
        limiter.admit("y", 0.1)  # 10 lines pass (the bucket refilled), 10 are dropped
    assert limiter.marker(0.11) is None  # not a line's worth of tokens yet
    assert "10+ lines (10 bytes)" in (limiter.marker(0.3) or "")


def test_skipped_output_counts_as_dropped_and_lines_are_cut() -> None:
    limiter = Limiter(LIMITS, now_s=0.0)
    limiter.skipped(5000)
    marker, _ = limiter.admit("next", 0.0)
    assert marker is not None and "(5000 bytes)" in marker
    long = "é" * (MAX_LINE_CHARS + 10)
    assert len(cut(long)) == MAX_LINE_CHARS and cut(long).endswith("…")


def test_a_file_is_read_on_and_emptied_past_its_bound_keeping_its_newest_lines(
    tmp_path: Path,
) -> None:
    log = tmp_path / "r.log"
    log.write_bytes(b"one\ntwo\n")
    first = read_file_output(log, 0, bound_bytes=1000)
    assert (first.data, first.position, first.skipped_bytes) == (b"one\ntwo\n", 8, 0)
    with log.open("ab") as out:
        out.write(b"three\n")
    assert read_file_output(log, first.position, 1000).data == b"three\n"
    big = b"".join(f"line {i:08d}\n".encode() for i in range(200_000))  # 2.8 MB
    with log.open("ab") as out:
        out.write(big + b"the last line\n")
    over = read_file_output(log, 14, bound_bytes=1_000_000)
    assert over.position == 0 and log.stat().st_size == 0  # emptied
    assert over.data.endswith(b"the last line\n") and len(over.data) <= READ_MAX_BYTES
    assert over.data.startswith(b"line ")  # from a line's start
    assert over.skipped_bytes + len(over.data) == len(big) + len(b"the last line\n")
    assert read_file_output(tmp_path / "gone.log", 5, 1000).data == b""


def test_dockers_lines_are_read_after_the_newest_one_seen() -> None:
    lines = ["2026-12-06T20:40:00.000000001Z a\n", "2026-12-06T20:40:00.5Z b\n",
             "not a time\n", "2026-12-06T20:40:01.25Z c"]  # fmt: skip
    first = docker_output(lines, 0)
    assert first.data == b"a\nb\nc\n"
    again = docker_output(lines, first.position)
    assert again.data == b"" and again.position == first.position
    assert docker_output(lines[:2], 0).position < first.position

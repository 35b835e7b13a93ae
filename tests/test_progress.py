"""Progress of long commands: live on a terminal, a line per event elsewhere, nothing with --quiet."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_TARGET

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(*args: str, timeout: float = 600) -> tuple[int, str]:
    """`vibeserve ARGS` with stdout and stderr on a pseudo-terminal, as a person runs it:
    its exit code and everything it drew, escape codes removed."""
    master, slave = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "vibeserve_ray.cli", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            cwd=ROOT, env=env, start_new_session=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, ANSI.sub("", out.decode(errors="replace"))


def test_bench_on_a_terminal_shows_a_live_bar_with_requests_done_and_tokens_per_second(tiny_target):
    code, screen = run_on_terminal("bench", str(TINY_TARGET), "--candidate", "seed", "--num-requests", "8")
    assert code == 0, screen[-3000:]
    assert "Serving Benchmark Result" in screen
    bars = re.findall(r"bench: 8 requests\s.*?(\d)/8\s+([\d,]+) tok/s", screen)  # drawn again as requests finish
    assert bars, screen[-3000:]
    assert len({done for done, _ in bars}) > 1 and max(int(done) for done, _ in bars) == 8
    assert all(int(rate.replace(",", "")) > 0 for _, rate in bars)
    assert "bench: 8/8 done" not in screen, "a terminal gets the bar, not the log lines"


def test_off_a_terminal_a_status_is_one_line_per_change_and_quiet_shows_nothing(capsys):
    from vibeserve_ray import progress

    progress.start()  # pytest's captured streams are no terminal
    try:
        assert not progress.live()
        progress.status("round 1: 0 done, 1 running")
        progress.status("round 1: 0 done, 1 running")
        progress.task("bench: 4 requests", 4)
        progress.advance(1, 32)
        progress.status("round 1: 1 done, 0 running")
        progress.event("search: stopped")
        progress.start(quiet=True)
        progress.event("search: stopped")
        progress.status("round 2: 0 done, 1 running")
    finally:
        progress.stop()
    assert capsys.readouterr().err.splitlines() == ["round 1: 0 done, 1 running", "round 1: 1 done, 0 running", "search: stopped"]


@pytest.mark.parametrize("argv", [["check", "T"], ["bench", "T"], ["search", "T"], ["deploy", "RUN"]])
def test_every_long_command_takes_quiet(argv):
    from vibeserve_ray.cli import build_parser

    assert build_parser().parse_args([*argv, "--quiet"]).quiet is True


def test_a_search_off_a_terminal_says_each_start_and_finish_of_a_round_with_the_best_so_far(watched_search):
    lines = watched_search.stderr.splitlines()
    assert "search: round 0/1: 0 done, 1 running, 0 waiting" in lines  # the seed
    assert "search: round 1/1: 0 done, 1 running, 0 waiting; best" in "\n".join(lines)
    assert any(ln.startswith("search: round 1/1: 1 done, 0 running, 0 waiting; best output_throughput ") for ln in lines)

"""The live display as a person sees it: the CLI runs under a pseudo-terminal of 120x40, and
pyte (a terminal emulator) replays what it wrote into the final screen."""

import os
import re
import select
import sys
from pathlib import Path

import pytest

pyte = pytest.importorskip("pyte")
pty = pytest.importorskip("pty")

ROOT = Path(__file__).resolve().parents[1]
COLUMNS, ROWS = 120, 40


def run_in_terminal(args: list[str]) -> tuple[int, list[str], str]:
    """(exit code, the final screen's lines, everything written with escapes removed)."""
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, in the repository, on the terminal
        os.chdir(ROOT)
        os.environ.update(COLUMNS=str(COLUMNS), LINES=str(ROWS), TERM="xterm-256color")
        os.execv(sys.executable, [sys.executable, "-m", "dltrain", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    written = b""
    while select.select([fd], [], [], 300)[0]:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        written += chunk
    _, status = os.waitpid(pid, 0)
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(written)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", written.decode("utf-8", "replace"))
    return os.waitstatus_to_exitcode(status), screen.display, plain


@pytest.mark.slow
def test_a_note_during_an_epoch_goes_above_the_bar_never_into_it(tmp_path):
    """The issue's reproduction: digits_cnn for 8 epochs gives the overfitting note while the
    last epoch's bar is on screen."""
    args = ["train", "configs/digits_cnn.yaml", "--set", "train.epochs=8"]
    code, screen, plain = run_in_terminal([*args, "--out", str(tmp_path / "run")])
    assert code == 0, plain[-2000:]
    assert any(line.startswith("note: val accuracy flat since epoch") for line in screen)
    assert not [line for line in screen if "━" in line and "note:" in line]
    assert not [line for line in screen if "━" in line]  # no bar left behind on the screen


@pytest.mark.slow
def test_a_status_first_then_bars_with_the_running_figures(tmp_path):
    """Batches of 4: epochs long enough (300 steps) for the bar to be drawn several times."""
    args = ["train", "configs/digits_cnn.yaml", "--set", "train.epochs=2"]
    args += ["--set", "data.batch_size=4", "--out", str(tmp_path / "run")]
    code, _, plain = run_in_terminal(args)
    assert code == 0, plain[-2000:]
    assert plain.index("starting: loading the data") < plain.index("run ")
    bars = [line for line in plain.split("\r") if "samples/s" in line]
    assert bars, plain[-2000:]
    assert all(re.search(r"loss \d+\.\d{4}  acc \d\.\d{3}", bar) for bar in bars)
    assert all(re.search(r"run \d:\d\d:\d\d left", bar) for bar in bars)

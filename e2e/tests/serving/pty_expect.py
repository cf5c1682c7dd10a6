"""Runs a command in a pseudo-terminal and drives it as a person at the keyboard would, in the
manner of `expect`: each `expect:TEXT` waits until TEXT shows after what the previous one
matched, each `send:TEXT` types TEXT (with Python escapes: `\\n`, `\\x03` for Ctrl-C, `\\x04`
for Ctrl-D). After the steps it waits for the command to exit, prints everything the terminal
showed, then `EXIT <code>`.

    pty_expect.py [--timeout SECONDS] STEP... -- COMMAND [ARG...]
"""

import codecs
import os
import pty
import select
import sys
import time

args = sys.argv[1:]
timeout = 120.0
if args[:1] == ["--timeout"]:
    timeout, args = float(args[1]), args[2:]
split = args.index("--")
steps, command = args[:split], args[split + 1 :]

pid, fd = pty.fork()
if pid == 0:
    os.execvp(command[0], command)

shown = b""


def read_some(left):
    """Adds what the terminal shows within `left` seconds; False once it is closed."""
    global shown
    ready, _, _ = select.select([fd], [], [], max(left, 0))
    if not ready:
        return True
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    shown += chunk
    return bool(chunk)


def fail(why):
    sys.stdout.write(shown.decode(errors="replace"))
    sys.exit(why)


matched = 0
for step in steps:
    kind, _, text = step.partition(":")
    data = codecs.decode(text, "unicode_escape").encode()
    if kind == "send":
        os.write(fd, data)
    elif kind == "expect":
        deadline = time.monotonic() + timeout
        while (found := shown.find(data, matched)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not read_some(left):
                fail(f"never showed {text!r} (waited {timeout} s)")
        matched = found + len(data)
    else:
        fail(f"unknown step {step!r}")

deadline = time.monotonic() + timeout
while read_some(deadline - time.monotonic()) and time.monotonic() < deadline:
    pass
# A command that closed the terminal is exiting: a moment to be reaped.
grace = time.monotonic() + 2
while (reaped := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < grace:
    time.sleep(0.05)
_, status = reaped
if reaped[0] == 0:
    os.kill(pid, 9)
    fail(f"still running {timeout} s after the last step")
sys.stdout.write(shown.decode(errors="replace"))
print(f"\nEXIT {os.waitstatus_to_exitcode(status)}")

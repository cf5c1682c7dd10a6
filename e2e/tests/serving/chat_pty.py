"""Drives `lantern chat` through a pseudo-terminal as a person would: waits for the prompt, types
a question, waits for the next prompt (the streamed answer comes in between), then ends the
chat with Ctrl-D. Prints what the terminal showed, then `EXIT <code>`.

    chat_pty.py LANTERN_BINARY TARGET QUESTION [FLAG ...]
"""

import os
import pty
import select
import sys
import time

binary, target, question = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "chat", target, *sys.argv[4:]])

shown = b""


def read_until(prompts, timeout=120.0):
    """Reads until the terminal has shown `prompts` prompts in all."""
    global shown
    deadline = time.monotonic() + timeout
    while shown.count(b"you> ") < prompts:
        left = deadline - time.monotonic()
        if left <= 0:
            sys.stdout.write(shown.decode(errors="replace"))
            sys.exit(f"no prompt number {prompts} within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk


read_until(1)
os.write(fd, question.encode() + b"\n")
read_until(2)
os.write(fd, b"\x04")
_, status = os.waitpid(pid, 0)
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        shown += chunk
except OSError:
    pass
sys.stdout.write(shown.decode(errors="replace"))
print(f"\nEXIT {os.waitstatus_to_exitcode(status)}")

"""The live dashboard: poll the supervisor, read keys, draw `dashboard.render(snapshot)`.

One thread draws and reads keys; each poll is one control request (`status` with
`events_since`, so the events come in the same reply).  Key actions (kill, pause/resume, restart)
are the same control commands `lfctl kill/pause/resume/restart` send; they run on a helper thread
because `restart` of a running node waits for it to exit, and the view must keep moving meanwhile.

Several dashboards may attach to one cluster: each is just another control client.  Quitting
(`q`) only leaves the view; what happens to the cluster is the caller's business (`lfctl up` stops
it on Ctrl-C, `lfctl dashboard` never does).
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from rich.console import Console
from rich.live import Live

from orchestrator.control import ControlError, request
from orchestrator.dashboard import render

__all__ = ["DashboardApp", "KeyReader", "parse_keys", "use_dashboard"]

REFRESH_S = 0.3  # ~3 frames a second (the issue asks for 2-4)
STATUS_TIMEOUT = 1.0
ACTION_TIMEOUT = 10.0  # kill/restart reply once the old process has exited (5 s grace + margin)
EVENTS_KEPT = 200

UP, DOWN = "up", "down"


def use_dashboard() -> bool:
    """Draw the live view only on a real terminal (and not when LFCTL_PLAIN is set)."""
    if os.environ.get("LFCTL_PLAIN"):
        return False
    try:
        return sys.stdout.isatty() and sys.stdin.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def parse_keys(data: str) -> list[str]:
    """Split raw terminal input into keys: single characters, "up" and "down" for the arrows
    (both the CSI and SS3 forms); other escape sequences are dropped."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":
            seq = data[i + 1:i + 3]
            if seq in ("[A", "OA"):
                keys.append(UP)
                i += 3
                continue
            if seq in ("[B", "OB"):
                keys.append(DOWN)
                i += 3
                continue
            # Another sequence (or a lone Esc): skip to its final byte.
            j = i + 1
            if j < len(data) and data[j] in "[O":
                j += 1
                while j < len(data) and not ("@" <= data[j] <= "~"):
                    j += 1
                j += 1
            i = max(j, i + 1)
            continue
        keys.append(ch)
        i += 1
    return keys


class KeyReader:
    """Puts the terminal in cbreak mode (keys arrive at once, unechoed; Ctrl-C still raises
    SIGINT) and restores it on exit.  `read(timeout)` waits up to `timeout` for keys."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> KeyReader:
        try:
            fd = self.stream.fileno()
            if os.isatty(fd):
                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
                self.fd = fd
        except (OSError, ValueError, termios.error):
            self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass

    def read(self, timeout: float) -> list[str]:
        if self.fd is None:
            time.sleep(max(0.0, timeout))
            return []
        try:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        except InterruptedError:
            return []
        if not ready:
            return []
        try:
            data = os.read(self.fd, 256)
        except OSError:
            return []
        return parse_keys(data.decode("utf-8", "replace"))


class ControlClient:
    """A persistent REQ socket to the supervisor, for the polls (a new TCP connection per poll
    would cost the supervisor more than the status itself).  Lazy Pirate: after a timeout the
    socket is closed and a new one is made on the next call.  Same signature as
    `control.request`; used from one thread only."""

    def __init__(self) -> None:
        self._sock: zmq.Socket | None = None
        self._endpoint: str | None = None

    def __call__(self, endpoint: str, obj: dict, timeout: float = STATUS_TIMEOUT) -> dict:
        if self._sock is None or self._endpoint != endpoint:
            self.close()
            self._sock = zmq.Context.instance().socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(endpoint)
            self._endpoint = endpoint
        sock = self._sock
        try:
            sock.send(json.dumps(obj).encode())
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                raise ControlError(f"supervisor is not answering on {endpoint}")
            reply = json.loads(sock.recv())
        except (zmq.ZMQError, ValueError, ControlError) as exc:
            self.close()  # a REQ socket without its reply is stuck: start afresh next time
            if isinstance(exc, ControlError):
                raise
            raise ControlError(f"supervisor on {endpoint}: {exc}") from None
        if not isinstance(reply, dict):
            raise ControlError(f"supervisor sent an unreadable reply on {endpoint}")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class DashboardApp:
    """State of one dashboard: the latest status, the events seen, the selection, the footer
    message.  `poll()` and `handle_key()` change it; `snapshot()` is what gets drawn."""

    def __init__(self, endpoint: str, *, title: str = "lfctl dashboard", quit_hint: str = "q quit view",
                 requester: Callable[..., dict] | None = None, banner: Callable[[], str | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.endpoint = endpoint
        self.title = title
        self.quit_hint = quit_hint
        # Polls go over one persistent socket; actions (on a helper thread) over their own.
        self.poll_request: Callable[..., dict] = requester or ControlClient()
        self.request: Callable[..., dict] = requester or request
        self.banner = banner
        self.clock = clock
        self.status: dict | None = None
        self.error: str | None = None
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.events_seq = 0
        self.selected: int | None = None
        self.message: str | None = None
        self.show_help = False
        self.failed_polls = 0
        self._action: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ data

    def poll(self) -> bool:
        """Fetch status and new events; False when the supervisor did not answer."""
        try:
            reply = self.poll_request(self.endpoint, {"cmd": "status", "events_since": self.events_seq,
                                                      "events_limit": 100}, STATUS_TIMEOUT)
        except ControlError as exc:
            self.failed_polls += 1
            self.error = str(exc)
            return False
        if not reply.get("ok"):
            self.failed_polls += 1
            self.error = str(reply.get("error") or "the supervisor refused status")
            return False
        self.failed_polls = 0
        self.error = None
        self.status = reply
        seq = reply.get("events_seq")
        if isinstance(seq, int) and seq < self.events_seq:
            # A different supervisor (restarted): its numbering starts again.
            self.events.clear()
            self.events_seq = 0
        for event in reply.get("events") or []:
            if event.get("seq", 0) > self.events_seq:
                self.events.append(event)
                self.events_seq = event["seq"]
        ids = self.node_ids()
        if self.selected not in ids:
            view = reply.get("view") or {}
            self.selected = view.get("primary") if view.get("primary") in ids else (ids[0] if ids else None)
        return True

    def node_ids(self) -> list[int]:
        return [n["id"] for n in (self.status or {}).get("nodes") or []]

    def node(self, node_id: int | None) -> dict | None:
        for n in (self.status or {}).get("nodes") or []:
            if n["id"] == node_id:
                return n
        return None

    def snapshot(self, width: int | None = None, events_rows: int = 10) -> dict:
        with self._lock:
            message = self.message
        return {
            "status": self.status, "events": list(self.events), "selected": self.selected,
            "message": message, "error": self.error, "show_help": self.show_help, "title": self.title,
            "quit_hint": self.quit_hint, "now": self.clock(), "width": width, "events_rows": events_rows,
            "banner": self.banner() if self.banner is not None else None,
        }

    # ------------------------------------------------------------------ keys

    def handle_key(self, key: str) -> str | None:
        """Apply one key; returns "quit" for q (and Q)."""
        if key in ("q", "Q"):
            return "quit"
        if key == "?":
            self.show_help = not self.show_help
            return None
        ids = self.node_ids()
        if key in (UP, DOWN, "j", "J") and ids:
            if self.selected not in ids:
                self.selected = ids[0]
            else:
                k = ids.index(self.selected) + (-1 if key == UP else 1)
                self.selected = ids[max(0, min(len(ids) - 1, k))]
            return None
        if key.isdigit() and key != "0":
            if int(key) in ids:
                self.selected = int(key)
            else:
                self.set_message(f"no node {key}")
            return None
        if key in ("k", "p", "r"):
            self.act(key)
        return None

    def command_for(self, key: str) -> dict | None:
        node = self.node(self.selected)
        if node is None:
            return None
        if key == "k":
            return {"cmd": "kill", "node": node["id"], "signal": "KILL"}
        if key == "r":
            return {"cmd": "restart", "node": node["id"], "wipe": False}
        if key == "p":
            return {"cmd": "resume" if node.get("state") == "paused" else "pause", "node": node["id"]}
        return None

    def act(self, key: str) -> None:
        cmd = self.command_for(key)
        if cmd is None:
            self.set_message("select a node first (arrows or its number)")
            return
        if self._action is not None and self._action.is_alive():
            self.set_message("still waiting for the previous action")
            return
        self.set_message(f"{cmd['cmd']} node {cmd['node']}...")
        self._action = threading.Thread(target=self._run_action, args=(cmd,), daemon=True, name="dashboard-action")
        self._action.start()

    def _run_action(self, cmd: dict) -> None:
        try:
            reply = self.request(self.endpoint, cmd, ACTION_TIMEOUT)
        except ControlError as exc:
            self.set_message(f"{cmd['cmd']} node {cmd['node']}: {exc}")
            return
        except Exception as exc:  # never let a helper thread die silently
            self.set_message(f"{cmd['cmd']} node {cmd['node']}: {type(exc).__name__}: {exc}")
            return
        if reply.get("ok"):
            self.set_message(str(reply.get("message") or f"{cmd['cmd']} node {cmd['node']}: done"))
        else:
            self.set_message(f"{cmd['cmd']} node {cmd['node']} refused: {reply.get('error')}")

    def set_message(self, text: str) -> None:
        with self._lock:
            self.message = text

    def wait_action(self, timeout: float) -> None:
        if self._action is not None:
            self._action.join(timeout)

    # ------------------------------------------------------------------ the loop

    def run(self, *, console: Console | None = None, keys: KeyReader | None = None,
            stop: Callable[[], bool] | None = None, gone: Callable[[], bool] | None = None,
            refresh: float = REFRESH_S) -> str:
        """Draw until `q` ("quit"), `stop()` returns true ("stopped") or the supervisor is gone
        for good ("gone": `gone()` says so after a failed poll).  Ctrl-C raises KeyboardInterrupt,
        after the terminal has been restored."""
        console = console or Console()
        reader = keys or KeyReader()
        try:
            return self._loop(console, reader, stop, gone, refresh)
        finally:
            if isinstance(self.poll_request, ControlClient):
                self.poll_request.close()

    def _loop(self, console: Console, reader: KeyReader, stop: Callable[[], bool] | None,
              gone: Callable[[], bool] | None, refresh: float) -> str:
        with reader, Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                          redirect_stderr=False, transient=True) as live:
            next_poll = 0.0
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + refresh
                    if not self.poll() and gone is not None and self.failed_polls >= 2 and gone():
                        return "gone"
                    live.update(render(self.snapshot(console.width, self.events_rows(console))), refresh=True)
                if stop is not None and stop():
                    return "stopped"
                redraw = False
                for key in reader.read(max(0.0, min(next_poll - time.monotonic(), refresh))):
                    if self.handle_key(key) == "quit":
                        return "quit"
                    redraw = True
                if redraw:
                    live.update(render(self.snapshot(console.width, self.events_rows(console))), refresh=True)

    def events_rows(self, console: Console) -> int:
        """As many events as fit under the other panels (header, nodes, clients, footer)."""
        fixed = 17 + len(self.node_ids()) + (9 if self.show_help else 0) + (1 if self.banner is not None else 0)
        fixed += 1 if self.error else 0
        return max(3, console.height - fixed)


def render_once(endpoint: str, *, title: str = "lfctl dashboard", console: Console | None = None,
                events_rows: int = 10) -> bool:
    """Print one frame (no terminal needed): for scripts, logs and the README."""
    app = DashboardApp(endpoint, title=title, requester=request)
    ok = app.poll()
    console = console or Console()
    console.print(render(app.snapshot(console.width, events_rows)))
    return ok


def run_attached(endpoint: str, title: str, *, gone: Callable[[], bool] | None = None,
                 quit_hint: str = "q quit view") -> str:
    """The live dashboard on this terminal until q ("quit") or the supervisor is gone ("gone").
    Ctrl-C raises KeyboardInterrupt (after the terminal is restored): the caller decides what
    it means."""
    app = DashboardApp(endpoint, title=title, quit_hint=quit_hint)
    return app.run(gone=gone)

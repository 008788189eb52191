"""The dashboard's rendering: a pure function from a snapshot (plain data) to a rich renderable.

Nothing here talks to a socket, reads a clock or a terminal: `render(snapshot)` depends only on its
argument, so tests render fixed snapshots to a recording `rich.console.Console` and assert on the
text.  The live loop (`orchestrator/dashboard_app.py`) builds snapshots from the supervisor's
`status` reply (which carries the events and the client telemetry aggregate) and its own UI state.

Snapshot keys (all optional except `status`, which may be None when the supervisor is unreachable):

    status      the supervisor's status reply: view, nodes, clients, stats, endpoints...
    events      event dicts (seq, t, kind, level, node, msg), oldest first
    selected    the selected node id
    message     the outcome of the last key action, shown in the footer
    error       why there is no fresh status (the supervisor is not answering...)
    show_help   show the key help instead of the events
    title       "lfctl up", "lfctl dashboard", "lfctl demo"
    quit_hint   what `q` does here ("q quit view", "q stop the demo")
    now         unix time of the snapshot (the clock in the header)
    banner      an extra line under the header (the demo's next step)
    events_rows how many events to show (default 10)
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["render", "sparkline", "fmt_us", "fmt_bytes", "fmt_duration", "node_state_text", "node_in_trouble",
           "HELP_LINES"]

SPARK = "▁▂▃▄▅▆▇█"
HEARTBEAT_WARN_MS = 250  # no ping for this long: the node stands out (failure timeout is 500 ms)
LAG_WARN = 1000  # entries behind the primary

LEVEL_STYLE = {"info": "", "good": "green", "warn": "yellow", "error": "bold red"}

HELP_LINES = (
    ("↑/↓, 1-9", "select a node"),
    ("k", "kill the selected node (SIGKILL)"),
    ("p", "pause the selected node (SIGSTOP), or resume it if paused"),
    ("r", "restart the selected node (it catches up and rejoins the view)"),
    ("?", "show or hide this help"),
    ("q", "quit the view (the cluster keeps running); Ctrl-C in `lfctl up` stops the cluster"),
)


# --------------------------------------------------------------------------- formatting helpers


def sparkline(values: list[float] | list[int], width: int | None = None, top: float | None = None) -> str:
    """Unicode block sparkline of the last `width` values, scaled to `top` (default: their max).
    Zero is the lowest block, so a stall shows as a flat floor rather than a gap."""
    vals = list(values)[-width:] if width else list(values)
    if not vals:
        return ""
    hi = top if top is not None else max(vals)
    if hi <= 0:
        return SPARK[0] * len(vals)
    out = []
    for v in vals:
        k = int(round((len(SPARK) - 1) * max(0.0, min(float(v), hi)) / hi))
        out.append(SPARK[k])
    return "".join(out)


def fmt_us(us: float | int | None) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.0f} MiB" if n >= 10 << 20 else f"{n / (1 << 20):.1f} MiB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_ms_ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def fmt_count(n: int | float | None) -> str:
    if n is None:
        return "-"
    return f"{n:,.0f}"


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


# --------------------------------------------------------------------------- node rows


def node_state_text(node: dict) -> str:
    """up, starting, paused, down, crashed (how), catching up 42%."""
    state = node.get("state") or "?"
    if state == "catching up":
        pct = node.get("catch_up_percent")
        return f"catching up {pct:.0f}%" if isinstance(pct, (int, float)) else "catching up"
    if state == "crashed" and node.get("exit_code") is not None:
        code = node["exit_code"]
        return f"crashed ({'signal ' + str(-code) if code < 0 else 'exit ' + str(code)})"
    return state


def node_in_trouble(node: dict, status: dict) -> str | None:
    """"error" for a node that is down/crashed/paused or out of the view, "warn" for one that is
    catching up, lagging or late with its heartbeat, None when all is well."""
    state = node.get("state")
    if state in ("down", "crashed"):
        return "error"
    if state == "paused":
        return "error"
    if state in ("catching up", "starting") or node.get("role") in ("learner", "none"):
        return "warn"
    ping = node.get("last_ping_ms_ago")
    if ping is not None and ping > HEARTBEAT_WARN_MS:
        return "warn"
    lag = node.get("lag")
    if lag is not None and lag > LAG_WARN:
        return "warn"
    return None


# Columns, and the terminal width below which each is left out (least useful first).
NODE_COLUMNS = (
    ("", "left", 0), ("node", "right", 0), ("pid", "right", 105), ("role", "left", 0), ("state", "left", 0),
    ("view", "right", 90), ("last", "right", 0), ("commit", "right", 0), ("applied", "right", 90),
    ("lag", "right", 0), ("ops/s", "right", 0), ("heartbeat", "right", 0), ("cpu", "right", 105),
    ("rss", "right", 115), ("restarts", "right", 125), ("uptime", "right", 125),
)


def _nodes_table(status: dict, selected: int | None, width: int | None = None) -> Table:
    view = status.get("view") or {}
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False, header_style="bold")
    keep = [width is None or width >= min_width for _, _, min_width in NODE_COLUMNS]
    for (name, justify, _), k in zip(NODE_COLUMNS, keep):
        if k:
            table.add_column(name, justify=justify, no_wrap=True)
    for node in status.get("nodes") or []:
        trouble = node_in_trouble(node, status)
        role = node.get("role") or "none"
        is_primary = role == "primary" and node.get("id") == view.get("primary")
        if trouble == "error":
            style = "bold red"
        elif trouble == "warn":
            style = "yellow"
        elif is_primary:
            style = "bold green"
        else:
            style = ""
        if is_primary:
            role_text = "★ primary"
        elif role == "none":
            role_text = "-"
        else:
            role_text = role
        running = node.get("state") not in ("down", "crashed")
        cpu = node.get("cpu_percent")
        ops = node.get("ops_per_s")
        cells = [
            "▶" if node.get("id") == selected else " ", _dash(node.get("id")), _dash(node.get("pid")), role_text,
            node_state_text(node), _dash(node.get("view")), _dash(node.get("last_index")),
            _dash(node.get("commit_index")), _dash(node.get("applied_index")),
            _dash(node.get("lag")) if running else "-",
            fmt_count(ops) if ops is not None else "-", fmt_ms_ago(node.get("last_ping_ms_ago")),
            f"{cpu:.0f}%" if cpu is not None else "-", fmt_bytes(node.get("rss_bytes")),
            _dash(node.get("restarts")), fmt_duration(node.get("uptime_s")),
        ]
        table.add_row(*[c for c, k in zip(cells, keep) if k],
                      style=style + (" reverse" if node.get("id") == selected else ""))
    return table


# --------------------------------------------------------------------------- panels


def _header(snapshot: dict) -> Text:
    status = snapshot.get("status")
    title = snapshot.get("title") or "lfctl dashboard"
    now = snapshot.get("now")
    clock = time.strftime("%H:%M:%S", time.localtime(now)) if now is not None else ""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" {title} ", style="bold white on blue")
    text.append(f" {clock}", style="dim")
    if status:
        view = status.get("view") or {}
        backups = ",".join(str(b) for b in view.get("backups") or []) or "none"
        text.append(f"  {status.get('cluster', '?')}  ")
        text.append(f"view {view.get('number', '?')}  ", style="bold")
        if view.get("primary"):
            text.append(f"primary {view['primary']}", style="bold green")
        else:
            text.append("NO PRIMARY", style="bold red")
        text.append(f"  backups {backups}  ")
        nodes = status.get("nodes") or []
        members = 1 + len(view.get("backups") or []) if view.get("primary") else 0
        primary_up = any(n.get("id") == view.get("primary") and n.get("state") == "up" for n in nodes)
        if status.get("stopping"):
            text.append("stopping", style="bold red")
        elif status.get("in_sync"):
            text.append("all in sync", style="green")
        elif primary_up:
            text.append(f"serving, {members} of {len(nodes)} nodes in the view", style="yellow")
        else:
            text.append("not serving", style="bold red")
        stats = status.get("stats") or {}
        if stats.get("failovers"):
            last = stats.get("last_failover_s")
            text.append(f"  failovers {stats['failovers']}" + (f", last {last * 1000:.0f} ms" if last is not None else ""))
    return text


def _clients_panel(status: dict, width: int | None = None) -> Panel:
    clients = status.get("clients") or {}
    totals = clients.get("totals") or {}
    window = clients.get("window") or {}
    lat = clients.get("latency_us") or {}
    history = clients.get("history_ops") or []
    p99s = clients.get("history_p99_us") or []
    loads = clients.get("loads", 0)
    spark_width = max(10, min(60, (width or 120) - 36))
    lines: list[Text] = []
    if not totals.get("ok") and not totals.get("errors") and not loads:
        lines.append(Text("no client load yet: run `lfctl load --customers 100 --orders 1000` "
                          "(every running load is summed here)", style="dim"))
    else:
        w = clients.get("window_s", 5)
        line = Text()
        line.append("throughput ", style="bold")
        line.append(f"{fmt_count(clients.get('throughput', 0))} ops/s", style="bold cyan")
        line.append(f" (last {w} s)   loads running {loads}")
        lines.append(line)
        line = Text()
        line.append("latency    ", style="bold")
        for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
            line.append(f"{label} ")
            line.append(fmt_us(lat.get(key)) if lat.get(key) else "-", style="cyan")
            line.append("   ")
        lines.append(line)
        if history:
            line = Text()
            line.append(f"ops/s {spark_width}s  ".ljust(11), style="bold")
            line.append(sparkline(history, spark_width), style="cyan")
            line.append(f"  peak {fmt_count(max(history[-spark_width:]))}")
            lines.append(line)
        if p99s and any(p99s):
            line = Text()
            line.append(f"p99   {spark_width}s  ".ljust(11), style="bold")
            line.append(sparkline(p99s, spark_width), style="magenta")
            line.append(f"  peak {fmt_us(max(p99s[-spark_width:]))}")
            lines.append(line)
        line = Text()
        errs = window.get("errors", 0)
        line.append(f"last {w} s   ", style="bold")
        line.append(f"errors {errs}", style="bold red" if errs else "")
        line.append(f"   retries {window.get('retries', 0)}   redirects {window.get('redirects', 0)}")
        lines.append(line)
        line = Text()
        line.append("total      ", style="bold")
        line.append(f"ok {fmt_count(totals.get('ok', 0))}   ")
        line.append(f"errors {fmt_count(totals.get('errors', 0))}", style="red" if totals.get("errors") else "")
        line.append(f"   retries {fmt_count(totals.get('retries', 0))}   redirects {fmt_count(totals.get('redirects', 0))}")
        lines.append(line)
        if totals.get("errors") and clients.get("last_error"):
            lines.append(Text(f"last error: {clients['last_error']}", style="red", no_wrap=True, overflow="ellipsis"))
    return Panel(Group(*lines), title="clients", title_align="left", border_style="cyan")


def _events_panel(events: list[dict], rows: int) -> Panel:
    lines: list[Text] = []
    for event in events[-rows:]:
        t = event.get("t")
        stamp = (time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}") if t else "--:--:--"
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(stamp + "  ", style="dim")
        line.append(str(event.get("msg", "")), style=LEVEL_STYLE.get(event.get("level", "info"), ""))
        lines.append(line)
    if not lines:
        lines.append(Text("no events yet", style="dim"))
    return Panel(Group(*lines), title="events", title_align="left", border_style="magenta")


def _help_panel() -> Panel:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, what in HELP_LINES:
        table.add_row(key, what)
    table.add_row("", Text("every action goes through the supervisor's control socket, like `lfctl kill N`",
                           style="dim"))
    return Panel(table, title="keys", title_align="left", border_style="yellow")


def _footer(snapshot: dict) -> Text:
    text = Text()
    hint = snapshot.get("quit_hint") or "q quit view"
    text.append(f" ↑↓/1-9 select  k kill  p pause/resume  r restart  ? help  {hint} ", style="reverse")
    if snapshot.get("message"):
        text.append("  " + str(snapshot["message"]), style="bold")
    return text


def render(snapshot: dict) -> RenderableType:
    """The whole dashboard for one snapshot (see the module docstring)."""
    status = snapshot.get("status")
    parts: list[RenderableType] = [_header(snapshot)]
    if snapshot.get("banner"):
        parts.append(Text(str(snapshot["banner"]), style="bold yellow"))
    if snapshot.get("error"):
        parts.append(Text(f"⚠ {snapshot['error']}", style="bold red"))
    if status:
        width = snapshot.get("width")
        parts.append(Panel(_nodes_table(status, snapshot.get("selected"), width), title="nodes", title_align="left",
                           border_style="blue"))
        parts.append(_clients_panel(status, width))
    if snapshot.get("show_help"):
        parts.append(_help_panel())
    parts.append(_events_panel(snapshot.get("events") or [], int(snapshot.get("events_rows") or 10)))
    parts.append(_footer(snapshot))
    return Group(*parts)

"""What the supervisor writes to view.json, and when (Supervisor.persist_view)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.supervisor import Supervisor
from orchestrator.view_service import ViewService
from protocol.config import load_config
from protocol.messages import View


@pytest.fixture
def sup(tmp_path: Path):
    cfg = load_config(None)
    s = Supervisor(cfg, tmp_path / "cluster.toml", tmp_path)
    s.vs = ViewService(list(cfg.node_ids), failure_timeout=0.5, persisted=None, now=0.0)
    writes: list[dict] = []
    real_write = s._write_view_file

    def counting_write(state: dict) -> None:
        writes.append(state)
        real_write(state)

    s._write_view_file = counting_write  # type: ignore[method-assign]
    s.writes = writes  # type: ignore[attr-defined]
    yield s
    s.ctx.term()


def _on_disk(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "view.json").read_text())


def test_nothing_changed_writes_nothing(sup, tmp_path: Path) -> None:
    assert sup.persist_view()
    assert len(sup.writes) == 1
    for _ in range(3):
        assert sup.persist_view()
    assert len(sup.writes) == 1
    assert _on_disk(tmp_path) == sup.vs.to_json()


def test_a_new_member_incarnation_in_the_same_view_is_written(sup, tmp_path: Path) -> None:
    sup.vs.view = View(4, 1, frozenset({2, 3}))
    sup.vs.member_incarnation.update({1: 11, 2: 22, 3: 33})
    assert sup.persist_view()
    sup.vs.member_incarnation[2] = 222  # node 2 restarted and was admitted again: same view object
    assert sup.persist_view()
    assert _on_disk(tmp_path)["incarnations"] == {"1": 11, "2": 222, "3": 33}
    assert len(sup.writes) == 2


def test_a_new_view_is_written(sup, tmp_path: Path) -> None:
    assert sup.persist_view()
    sup.vs.view = View(7, 2, frozenset({3}))
    assert sup.persist_view()
    assert _on_disk(tmp_path)["view"] == {"number": 7, "primary": 2, "backups": [3]}


def test_a_failed_write_is_tried_again(sup, tmp_path: Path) -> None:
    sup.vs.view = View(2, 1, frozenset({2}))
    real = sup._write_view_file

    def full_disk(state: dict) -> None:
        raise OSError(28, "No space left on device")

    sup._write_view_file = full_disk
    assert not sup.persist_view()
    sup._write_view_file = real
    assert sup.persist_view()
    assert _on_disk(tmp_path)["view"]["number"] == 2

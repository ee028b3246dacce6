"""The default database follows the bundled cases (an upgrade of kbq), but never at the cost of
a case someone changed through kbq since it was loaded.

An upgrade is simulated by pointing ``kb.service.bundled_cases_dir`` at a copy of the bundled
files and editing that copy; each step opens a new KnowledgeBase, as a new process would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import kb.service as service
from kb.errors import NotFoundError
from kb.paths import bundled_cases_dir
from kb.service import BUNDLED_HASHES_KEY, KnowledgeBase

REVISED = "llamafactory-7416"  # revised through the API, then also changed upstream
UPSTREAM = "trl-1627"  # changed upstream only
DROPPED_REVISED = "llamafactory-950"  # revised through the API, then dropped upstream
DROPPED = "llamafactory-1998"  # dropped upstream, never touched


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "bundled"
    shutil.copytree(bundled_cases_dir(), copy)
    monkeypatch.setattr(service, "bundled_cases_dir", lambda: copy)
    return copy


def _edit(bundle: Path, case_id: str, **changes: str) -> None:
    path = bundle / f"{case_id}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _revise(kb: KnowledgeBase, case_id: str, title: str) -> None:
    case = {k: v for k, v in kb.get(case_id).items() if k not in ("created_at", "updated_at")}
    kb.put_case({**case, "title": title}, case_id=case_id)


def test_upgrade_keeps_cases_revised_through_kbq_and_says_so(bundle: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = KnowledgeBase(home=home)
    first.ensure_ready()
    for case_id in (REVISED, UPSTREAM, DROPPED_REVISED, DROPPED):
        assert first.get(case_id)
    _revise(first, REVISED, "Team revision: Gemma-3 loss near 70 under ZeRO-3")
    _revise(first, DROPPED_REVISED, "Team revision: Baichuan2 full SFT loss 0")

    _edit(bundle, REVISED, title="Upstream rewording of the Gemma-3 case")
    _edit(bundle, UPSTREAM, title="Upstream rewording of the DPO case")
    (bundle / f"{DROPPED_REVISED}.yaml").unlink()
    (bundle / f"{DROPPED}.yaml").unlink()

    upgraded = KnowledgeBase(home=home)
    upgraded.ensure_ready()
    assert upgraded.get(REVISED)["title"] == "Team revision: Gemma-3 loss near 70 under ZeRO-3"
    assert upgraded.get(DROPPED_REVISED)["title"] == "Team revision: Baichuan2 full SFT loss 0"
    assert upgraded.get(UPSTREAM)["title"] == "Upstream rewording of the DPO case"
    with pytest.raises(NotFoundError):
        upgraded.get(DROPPED)
    [notice] = upgraded.notices
    assert "kept 2 case(s)" in notice and REVISED in notice and DROPPED_REVISED in notice

    # The kept cases stay kept at the next upgrade too, and nothing is said when nothing is kept.
    _edit(bundle, UPSTREAM, title="A second upstream rewording")
    again = KnowledgeBase(home=home)
    again.ensure_ready()
    assert again.get(REVISED)["title"].startswith("Team revision")
    assert again.get(UPSTREAM)["title"] == "A second upstream rewording"
    assert len(again.notices) == 1 and REVISED in again.notices[0]

    # An explicit `kbq ingest` of the bundled cases takes the bundled versions.
    report, _ = again.ingest()
    assert REVISED in report.updated
    assert again.get(REVISED)["title"] == "Upstream rewording of the Gemma-3 case"
    state = again.ensure_ready()
    assert json.loads(state.meta[BUNDLED_HASHES_KEY]).keys() >= {REVISED, UPSTREAM}


def test_a_base_loaded_before_hashes_were_kept_keeps_what_differs(bundle: Path, tmp_path: Path) -> None:
    """A database loaded by a kbq that recorded only the bundled ids cannot tell an upstream
    change from a local one: it keeps the stored version and says so, rather than lose a revision."""
    from kb.db.store import CaseStore

    home = tmp_path / "home"
    first = KnowledgeBase(home=home)
    first.ensure_ready()
    _revise(first, REVISED, "Team revision made before the upgrade")
    with CaseStore(first.url) as store, store.engine.begin() as conn:
        from sqlalchemy import delete

        from kb.db.schema import MetaRow

        conn.execute(delete(MetaRow).where(MetaRow.key == BUNDLED_HASHES_KEY))
    _edit(bundle, UPSTREAM, title="Upstream rewording of the DPO case")

    upgraded = KnowledgeBase(home=home)
    upgraded.ensure_ready()
    assert upgraded.get(REVISED)["title"] == "Team revision made before the upgrade"
    assert upgraded.get(UPSTREAM)["title"] != "Upstream rewording of the DPO case"
    assert any(REVISED in notice and UPSTREAM in notice for notice in upgraded.notices)

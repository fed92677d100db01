"""The architecture sweep: the CI slice reproduces the committed table, and the docs are its rendering.

The full sweep (every architecture in six mappings, about 6 minutes on 2 cores) is one command, `qeff sweep`;
this suite runs the fixed slice `qeff sweep --ci` (the reference families of every task and one architecture per
generic mechanism), which takes about a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from QEfficient.sweep import TASKS, sweep_items, task_types
from QEfficient.sweep.report import REFERENCE_FAMILIES, read_json, reference_families, render_markdown
from QEfficient.sweep.runner import PASS, run_sweep

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def committed():
    return read_json(DOCS / "supported_models.json")


def test_markdown_is_the_rendering_of_the_json(committed) -> None:
    meta, rows = committed
    assert (DOCS / "supported_models.md").read_text() == render_markdown(meta, rows)


def test_json_covers_every_architecture_of_the_mappings(committed) -> None:
    _, rows = committed
    for task in TASKS:
        assert sorted(r.model_type for r in rows if r.task == task) == sorted(task_types(task))


def test_reference_families_all_pass(committed) -> None:
    """Every family the reference validates (causal, speech, CTC and vision-language) passes."""
    _, rows = committed
    status = {(r.task, r.model_type): r.status for r in rows}
    failing = {
        f"{task}/{family}": status[(task, model_type)]
        for task, families in reference_families().items()
        for family, model_type in families.items()
        if status[(task, model_type)] != PASS
    }
    assert failing == {}


def test_ci_slice_reproduces_the_committed_table(committed, tmp_path) -> None:
    _, rows = committed
    expected = {(r.task, r.model_type): r for r in rows}
    items = sweep_items(ci=True)
    assert len(items) >= len(REFERENCE_FAMILIES) + 10
    got = run_sweep(items, workers=2, timeout=600, home=str(tmp_path))
    mismatches = {
        f"{r.task}/{r.model_type}": f"{r.status} ({r.stage}: {r.reason}) but the table says "
        f"{expected[(r.task, r.model_type)].status}"
        for r in got
        if r.status != expected[(r.task, r.model_type)].status
    }
    assert mismatches == {}
    assert next(r for r in got if r.model_type == "deepseek_v2").adapter == "deepseek_v2"

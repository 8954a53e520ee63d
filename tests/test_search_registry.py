"""The search's registries: every declared criterion and strategy is implemented, and nothing else is."""

from __future__ import annotations

from proqha.search.config import CRITERIA, STRATEGIES
from proqha.search.criteria import CRITERIA_TABLE
from proqha.search.strategies import STRATEGY_TABLE, calibration_user


def test_the_registries_implement_exactly_the_declared_choices():
    assert set(CRITERIA_TABLE) == set(CRITERIA)
    assert set(STRATEGY_TABLE) == set(STRATEGIES) - {"auto"}  # auto resolves to a registered one


def test_what_needs_calibration_data_is_said_by_the_registered_entries():
    from proqha.search.config import SearchConfig

    need = lambda **kw: calibration_user(SearchConfig(source="x", **kw).resolved())  # noqa: E731
    assert need() is None and need(criterion="random") is None
    assert need(criterion="loss") == "criterion 'loss'" and need(criterion="acc", strategy="sets") == "criterion 'acc'"
    assert need(target_cost=0.1) == "the budget allocation"
    assert need(target_cost=0.1, table_data="train") is None

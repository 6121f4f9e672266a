from __future__ import annotations

import pytest
from trick_cases import TRICK_CASES, TrickCase


@pytest.fixture(params=sorted(TRICK_CASES))
def trick_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def trick_case(trick_name: str) -> TrickCase:
    return TRICK_CASES[trick_name]

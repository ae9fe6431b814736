from __future__ import annotations

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.fakes import CountingIds, FixedClock
from tests.support.http import ConnectedTestClient


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake", max_body_mb=4096 / 2**20), engine=engine, clock=FixedClock(),
                ids=CountingIds())
    return ConnectedTestClient(app)

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.families import GENERIC
from mlx_server.domain.models import ModelRef
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


@pytest.fixture(scope="module")
def smollm_client(smollm_dir: Path) -> falcon.testing.TestClient:
    """The app on real MLX serving the built-in SmolLM2 as `smollm` (one per test module)."""
    catalog = StaticCatalog({"smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192)})
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))

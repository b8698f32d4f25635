"""The mesh with the training service, for training's end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.mesh import Mesh, running_mesh

__all__ = ["Mesh", "mesh"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path_factory.mktemp("mesh"), workers=("training",)) as running:
        yield running

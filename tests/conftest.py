"""Fixtures shared by every test area. Area-specific fixtures live in each area's conftest."""

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def paid_gateway() -> Iterator[object]:
    """A paid gateway on anvil with the real model, served from a thread of its own (one per
    session, shared by tests/sdk and tests/cli): ``paid_gateway.url``, ``.anvil``,
    ``.isolated()``. See tests/sdk/gateway_thread.py."""
    from tests.sdk.gateway_thread import GatewayThread

    with GatewayThread() as gateway:
        yield gateway

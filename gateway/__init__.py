"""The paychan gateway: the aiohttp application that sells classifications over x402.

    from gateway import GatewayConfig, create_app
    config = GatewayConfig.load(flags={"token": "0x...", "key_file": "provider.key"})
    web.run_app(create_app(config), port=config.port)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig

if TYPE_CHECKING:
    from aiohttp import web

    from inference import ImageClassifier

__all__ = ["ConfigError", "GatewayConfig", "create_app"]


def create_app(
    config: GatewayConfig, *, classifier: ImageClassifier | None = None, chain: object | None = None
) -> web.Application:
    """``gateway.app.create_app``; imported lazily so ``paychan --help`` stays instant."""
    from gateway.app import create_app as _create_app

    return _create_app(config, classifier=classifier, chain=chain)

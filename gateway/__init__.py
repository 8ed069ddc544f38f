"""The paychan gateway: the aiohttp application that sells classifications over x402.

    from gateway import GatewayConfig, create_app
    config = GatewayConfig.load(flags={"token": "0x...", "key_file": "provider.key"})
    web.run_app(create_app(config), port=config.port)
"""

from gateway.config import ConfigError, GatewayConfig

__all__ = ["ConfigError", "GatewayConfig", "create_app"]


def create_app(config: GatewayConfig, **shared):
    """``gateway.app.create_app``; imported lazily so ``paychan --help`` stays instant."""
    from gateway.app import create_app as _create_app

    return _create_app(config, **shared)

"""``paychan serve``'s connection limits: flags map to settings, defaults, errors naming the fix.

The limits themselves are exercised over sockets in tests/gateway/test_slow_clients.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.cli.serve import config_from_args
from gateway.config import ConfigError, GatewayConfig


LIMITS = ("header_timeout_s", "body_idle_timeout_s", "body_min_rate",
          "max_connections_per_address", "keepalive_timeout_s")


def test_limits_come_from_flags_and_are_validated(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "serve", "--no-payment", "--model", "null", "--samples-dir", str(tmp_path),
        "--header-timeout-s", "3", "--body-idle-timeout-s", "4", "--body-min-rate", "0",
        "--max-connections-per-address", "16", "--keepalive-timeout-s", "30",
    ])
    config = config_from_args(args, env={})
    assert [getattr(config, name) for name in LIMITS] == [3.0, 4.0, 0, 16, 30.0]
    defaults = GatewayConfig.load({}, env={})
    assert [getattr(defaults, name) for name in LIMITS] == [10.0, 20.0, 500, 128, 75.0]
    with pytest.raises(ConfigError, match="header_timeout_s: must be positive seconds, got 0.0; "
                                          "set --header-timeout-s, PAYCHAN_HEADER_TIMEOUT_S"):
        GatewayConfig.load({}, env={"PAYCHAN_HEADER_TIMEOUT_S": "0"})
    with pytest.raises(ConfigError, match=r"max_connections_per_address: must be 0 \(off\)"):
        GatewayConfig.load({"max_connections_per_address": -1}, env={})

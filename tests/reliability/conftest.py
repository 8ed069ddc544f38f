"""Reliability suite fixtures: the gateway area's chain, images and Redis prefix, reused."""

from __future__ import annotations

from tests.gateway.conftest import anvil, jpeg, make_config, null_classifier, png, redis_url  # noqa: F401

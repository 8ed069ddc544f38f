"""GatewayConfig: precedence flags > env > TOML > defaults, conversions, errors naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig

KEY = "0x" + "11" * 32  # a throwaway test key, not a real account


def test_defaults_are_sane() -> None:
    config = GatewayConfig.load({}, env={})
    assert config.port == 8402
    assert config.max_images == 16
    assert config.store.startswith("sqlite:///")
    assert config.settlement == "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"


def test_precedence_flags_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text('[gateway]\nprice = 7\nport = 9001\nmodel = "null"\nmax-images = 4\n')
    config = GatewayConfig.load(
        {"config": toml, "port": 9003}, env={"PAYCHAN_PORT": "9002", "PAYCHAN_PRICE": "8"}
    )
    assert config.port == 9003  # flag
    assert config.price == 8  # env beats TOML
    assert config.model == "null"  # TOML
    assert config.max_images == 4  # TOML key with a dash


def test_env_booleans_and_key_normalized() -> None:
    config = GatewayConfig.load({}, env={"PAYCHAN_PAYMENT": "off", "PAYCHAN_KEY": KEY.upper()[2:]})
    assert config.payment is False
    assert config.key == KEY


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(KEY + "\n")
    assert GatewayConfig.load({"key_file": path}, env={}).key == KEY
    assert "key" not in repr(GatewayConfig.load({"key_file": path}, env={})).replace("key_file", "")


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({}, {"PAYCHAN_PRICE": "ten"}, "price: expected a whole number, got 'ten'; set --price, PAYCHAN_PRICE"),
        ({"price": 0}, {}, "price: must be positive"),
        ({"withdraw_delay": 60}, {}, "withdraw_delay: must be 900..2592000"),
        ({"token": "0x1234"}, {}, "token: '0x1234' is not a 0x-prefixed 20-byte address"),
        ({"store": "postgres://x"}, {}, "store: 'postgres://x' is not sqlite:///PATH"),
        ({"workers": 2}, {}, "workers: more than one worker process needs a shared ledger"),
        ({"key": "0xabc"}, {}, "key: must be 32 bytes of hex"),
        ({"bogus": 1}, {}, "bogus: unknown setting"),
        ({"claim_batch_size": 101}, {}, "claim_batch_size: must be 1..100 channels per claim"),
        ({}, {"PAYCHAN_CLAIM_AFTER_S": "0"}, "claim_after_s: must be positive, got 0.0; set --claim-after-s"),
        ({"claim_threshold": -1}, {}, "claim_threshold: must be 0 or more"),
        ({}, {"PAYCHAN_BATCH_CAP": "0"}, "batch_cap: must be 1..256 images, got 0; set --batch-cap"),
    ],
)
def test_errors_name_field_and_fix(flags: dict, env: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(flags, env=env)
    assert needle in str(info.value)


def test_paying_gateway_needs_key_and_token() -> None:
    with pytest.raises(ConfigError, match="key: no receiver key"):
        GatewayConfig.load({}, env={}).require_payment_terms()
    with pytest.raises(ConfigError, match="token: no payment token"):
        GatewayConfig.load({"key": KEY}, env={}).require_payment_terms()
    GatewayConfig.load({"payment": False}, env={}).require_payment_terms()  # free mode: fine


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("price = = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        GatewayConfig.load({"config": bad}, env={})


def test_settlement_policy_defaults_and_env() -> None:
    """The settler's policy comes from the config (see gateway.chain_setup.settler_policy)."""
    from gateway.chain_setup import settler_policy

    policy = settler_policy(GatewayConfig.load({}, env={}))
    assert (policy.claim_after_s, policy.claim_threshold, policy.batch_size) == (3600.0, 1_000_000, 100)
    config = GatewayConfig.load({}, env={"PAYCHAN_CLAIM_THRESHOLD": "5_000", "PAYCHAN_FACILITATOR": "off",
                                         "PAYCHAN_START_BLOCK": "12"})
    assert settler_policy(config).claim_threshold == 5000
    assert config.facilitator is False and config.start_block == 12


def test_a_fixed_batch_cap_skips_the_warm_up_choice() -> None:
    """`--batch-cap N` serves batches of at most N, as set (benchmarks compare two processes
    at the same cap; the warm-up's timed choice can differ between them on a busy machine)."""
    import asyncio

    from gateway.predictions import open_classifier

    async def load() -> tuple[int, int, dict]:
        config = GatewayConfig.load({"batch_cap": 3, "payment": False}, env={})
        clf = await open_classifier(config)
        try:
            return clf.batch_cap, clf.buckets[-1], clf.warmup_rates
        finally:
            await clf.close()

    assert asyncio.run(load()) == (3, 3, {})  # nothing was timed

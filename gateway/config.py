"""The gateway's one typed configuration object.

Values come from, highest precedence first: command-line flags, ``PAYCHAN_*`` environment
variables, a TOML file (``--config FILE`` or ``PAYCHAN_CONFIG``), then the defaults below.
Every error names the field and the way to fix it::

    config = GatewayConfig.load(
        flags={"price": 1000, "token": "0x...", "rpc_url": "http://127.0.0.1:8545"},
        env=os.environ,
    )
    app = create_app(config)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["NULL_MODEL", "ConfigError", "GatewayConfig", "read_toml"]

#: ``model`` value that serves a constant prediction without torch (benchmarks, fast tests).
NULL_MODEL = "null"

_ENV_PREFIX = "PAYCHAN_"
_CANONICAL_SETTLEMENT = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
_CANONICAL_COLLECTOR = "0x4020806089470a89826cB9fB1f4059150b550004"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the field and fix."""


def _where(name: str) -> str:
    flag = "--" + name.replace("_", "-")
    return f"set {flag}, {_ENV_PREFIX}{name.upper()} or `{name} = ...` in the TOML file"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs, typed and validated.

    Amounts are in the token's smallest unit (6 decimals for USDC: 1000 = 0.001 USDC).
    """

    # --- serving
    host: str = "127.0.0.1"
    port: int = 8402
    workers: int = 1
    # --- chain and payment terms
    rpc_url: str = "http://127.0.0.1:8545"
    key: str | None = field(default=None, repr=False)  # receiver-authorizer key (hex)
    key_file: Path | None = None
    token: str | None = None
    token_name: str | None = None  # the token's EIP-712 domain; read from the chain if unset
    token_version: str | None = None
    # What people read amounts in (gateway.tokens): set by `paychan serve` from the chain.
    token_symbol: str | None = None
    token_decimals: int | None = None
    settlement: str = _CANONICAL_SETTLEMENT
    collector: str = _CANONICAL_COLLECTOR
    receiver: str | None = None  # payTo; defaults to the key's address
    price: int = 1000  # per image
    withdraw_delay: int = 900
    min_deposit: int | None = None  # advertised extra.minDeposit; default 100 x price
    max_timeout_seconds: int = 3600
    payment: bool = True  # False serves the paid routes free (benchmarks, local use)
    # --- state
    store: str = "sqlite:///paychan-gateway.sqlite3"
    samples_dir: Path = Path("paychan-samples")
    # --- model
    model: str = "tf_efficientnet_lite0"
    device: str = "cpu"
    batch_cap: int | None = None  # largest model batch; None: chosen at warm-up by timing
    models: Path | None = None  # a model store (inference.versions): serve its champion, pin others
    max_resident_models: int = 2  # store versions loaded at once (LRU); each has its own batcher
    # The store's champion alias is polled this often (aliases.json mtime + content) and a new
    # champion is loaded, warmed, golden-checked and swapped in (gateway.model_watch); 0: off.
    model_watch_s: float = 1.0
    # The ModelRegistry contract (contracts.DEV_REGISTRY on dev chains): advertised in
    # /v1/models, and, with publish_models, every served version is published there first
    # (gateway.provenance; the key must own the registry). None: no registry.
    registry: str | None = None
    publish_models: bool = True
    # After this many new samples, `paychan models retrain` runs in a subprocess (gateway.
    # retraining) and a candidate that passes the gate becomes champion; None: never.
    retrain_after: int | None = None
    retrain_poll_s: float = 10.0  # how often the sample count is checked
    # --- limits
    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 16
    max_top_k: int = 20
    max_in_flight_per_channel: int = 32
    max_in_flight: int = 256  # requests inside the classifier queue before 429
    retry_after_s: int = 1
    request_timeout_s: float = 30.0
    # --- samples (POST /v1/samples): signed by a payer with a funded channel here
    samples_per_minute: int = 60  # per payer, sustained (token bucket)
    samples_burst: int = 20  # per payer, at once
    max_sample_bytes: int = 4 * 1024 * 1024  # one sample's body
    samples_max_bytes: int = 10 * 1024**3  # image bytes the whole store may hold (then 507)
    samples_payer_max_bytes: int = 256 * 1024**2  # ... and each payer's share (then 507)
    sample_signature_max_age_s: float = 600.0  # older SAMPLE-SIGNATUREs are refused (401)
    # --- connections (gateway.connections): slow or greedy clients are cut off. An HTTP
    # client's pool (aiohttp, httpx: 100 connections) fits under the per-address cap.
    header_timeout_s: float = 10.0  # request line + headers, from connect or first byte (408)
    body_idle_timeout_s: float = 20.0  # longest gap in a body (408)
    body_min_rate: int = 500  # bytes/s a body must average after that grace; 0: no floor
    max_connections_per_address: int = 128  # open connections per peer address; 0: no cap (429)
    keepalive_timeout_s: float = 75.0  # idle keep-alive connection closed after this
    # --- chain sync: the watcher, the settler (claims + settle) and the facilitator routes.
    # A claim is due when ANY of: a withdrawal is pending on a channel with unclaimed charges
    # (at once), the oldest unclaimed charge is claim_after_s old, or claim_threshold units
    # are unclaimed. Then every claimable channel is claimed (claim_batch_size rows per
    # claimWithSignature) and the claimed value is settled to the receiver.
    settler: bool = True  # run the watcher + settler here (with --workers N, one holds the lease)
    claim_interval_s: float = 5.0  # how often the settler checks whether a claim is due
    claim_after_s: float = 3600.0  # claim once the oldest unclaimed charge is this old
    claim_threshold: int = 1_000_000  # ... or once this much is unclaimed (0: every check)
    claim_batch_size: int = 100  # channels per claimWithSignature (1..100)
    chain_poll_s: float = 1.0  # how often the watcher reads new blocks
    # While the chain node is unreachable, known channels are still served until this many
    # token units were charged (per process) since it was last seen; then 503 chain_unavailable.
    max_offline_exposure: int = 1_000_000
    confirmations: int = 0  # blocks deep before an event is applied (0 on dev chains)
    start_block: int | None = None  # where a watcher with no stored cursor starts (None: head)
    settler_lease_ttl_s: float = 15.0  # Redis lease: another worker takes over this long after a crash
    tx_timeout_s: float = 600.0  # how long a claim/settle/deposit may wait for its receipt
    facilitator: bool = True  # mount POST /facilitator/verify, /settle and GET /supported
    # --- operator routes (gateway/admin.py): POST /admin/settle exists only with a token
    admin_token: str | None = field(default=None, repr=False)  # PAYCHAN_ADMIN_TOKEN
    admin_token_file: Path | None = None  # --admin-token-file: a file holding the token
    # --- accounting (gateway/earnings.py, gateway/usage.py, the console at /admin/console)
    usage_log: Path | None = None  # one JSON line per paid answer; None: <sqlite ledger>.usage.jsonl
    console_sample_s: float = 60.0  # how often the console's earnings plot gets a point
    # --- shutdown
    drain_timeout_s: float = 10.0
    # --- the access log (gateway.access_log): one JSON line a request; "-" is stdout, "off" none
    access_log: str = "-"

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        toml_path: str | Path | None = None,
    ) -> GatewayConfig:
        """Merge flags > ``PAYCHAN_*`` env > TOML > defaults; read the key file; validate.

        ``flags`` maps field names to already-typed values (``None`` means "not given").
        """
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        env = {} if env is None else env
        toml_path = toml_path or flags.pop("config", None) or env.get(_ENV_PREFIX + "CONFIG")
        values: dict[str, Any] = {}
        if toml_path:
            values.update(read_toml(Path(toml_path)))
        known = {f.name for f in fields(cls)}
        for name in known:
            raw = env.get(_ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        for name, value in flags.items():
            if name not in known:
                raise ConfigError(f"{name}: unknown setting; known: {', '.join(sorted(known))}")
            values[name] = value
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GatewayConfig:
        """Build from field name -> value (strings are converted); validates."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        converted: dict[str, Any] = {}
        for name, raw in values.items():
            if name not in known:
                raise ConfigError(f"{name}: unknown setting; known: {', '.join(sorted(known))}")
            converted[name] = _convert(name, raw, hints[name])
        config = cls(**converted)
        if config.key is None and config.key_file is not None:
            config = dataclasses.replace(config, key=_read_key_file(config.key_file))
        if config.key is not None:
            config = dataclasses.replace(config, key=_normalize_key(config.key))
        if config.admin_token is None and config.admin_token_file is not None:
            config = dataclasses.replace(config, admin_token=_read_admin_token(config.admin_token_file))
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        positive = (
            "port", "workers", "price", "max_body_bytes", "max_images", "max_top_k",
            "max_in_flight_per_channel", "max_in_flight", "max_sample_bytes",
            "samples_per_minute", "max_timeout_seconds", "max_resident_models",
            "samples_burst", "samples_max_bytes", "samples_payer_max_bytes",
            "sample_signature_max_age_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}; {_where(name)}")
        for name in ("claim_interval_s", "claim_after_s", "chain_poll_s", "settler_lease_ttl_s",
                     "tx_timeout_s", "console_sample_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}; {_where(name)}")
        if self.batch_cap is not None and not 1 <= self.batch_cap <= 256:
            raise ConfigError(f"batch_cap: must be 1..256 images, got {self.batch_cap}; "
                              f"{_where('batch_cap')} (or leave it unset: chosen at warm-up)")
        if self.retrain_after is not None and (self.retrain_after < 1 or self.models is None):
            raise ConfigError(f"retrain_after: needs a model store (--models DIR) and at least 1 "
                              f"sample, got {self.retrain_after}; {_where('retrain_after')}")
        if self.retrain_poll_s <= 0:
            raise ConfigError(f"retrain_poll_s: must be positive, got {self.retrain_poll_s}; "
                              f"{_where('retrain_poll_s')}")
        if self.models is not None and self.is_null_model:
            raise ConfigError("models: the null model serves no store; drop --models "
                              "(PAYCHAN_MODELS) or --model null")
        for name in ("header_timeout_s", "body_idle_timeout_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive seconds, got {getattr(self, name)}; {_where(name)}")
        for name in ("body_min_rate", "max_connections_per_address"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be 0 (off) or more, got {getattr(self, name)}; {_where(name)}")
        for name in ("claim_threshold", "confirmations", "start_block", "max_offline_exposure"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name}: must be 0 or more, got {value}; {_where(name)}")
        if not 1 <= self.claim_batch_size <= 100:
            raise ConfigError(
                f"claim_batch_size: must be 1..100 channels per claim, got {self.claim_batch_size}; "
                f"{_where('claim_batch_size')}"
            )
        if not 900 <= self.withdraw_delay <= 2_592_000:
            raise ConfigError(
                f"withdraw_delay: must be 900..2592000 seconds (15 min to 30 days), got "
                f"{self.withdraw_delay}; {_where('withdraw_delay')}"
            )
        if not self.rpc_url.startswith(("http://", "https://")):  # connect_rpc speaks HTTP
            what = "is not an HTTP URL" if "://" in self.rpc_url else "has no scheme"
            raise ConfigError(f"rpc_url: {self.rpc_url!r} {what}; pass --rpc "
                              f"http://{self.rpc_url.split('://')[-1]} (or https://; also PAYCHAN_RPC_URL "
                              "or `rpc_url = ...` in the TOML file)")
        if self.model_watch_s < 0:
            raise ConfigError(f"model_watch_s: must be 0 (off) or more seconds, got "
                              f"{self.model_watch_s}; {_where('model_watch_s')}")
        for name in ("token", "settlement", "collector", "receiver", "registry"):
            value = getattr(self, name)
            if value is not None and not _is_address(value):
                raise ConfigError(f"{name}: {value!r} is not a 0x-prefixed 20-byte address; {_where(name)}")
        if not (self.store.startswith(("sqlite://", "redis://", "rediss://")) or self.store == "memory"):
            raise ConfigError(
                f"store: {self.store!r} is not sqlite:///PATH, redis://HOST:PORT/DB or memory; "
                f"{_where('store')}"
            )
        if self.admin_token is not None:
            _check_admin_token(self.admin_token)
        if self.workers > 1 and not self.store.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "workers: more than one worker process needs a shared ledger; "
                "pass --store redis://127.0.0.1:6379/0 (or use --workers 1)"
            )

    def require_payment_terms(self) -> None:
        """The fields a paying gateway cannot start without; raises ConfigError."""
        if not self.payment:
            return
        if self.key is None:
            raise ConfigError("key: no receiver key; pass --key-file FILE or set PAYCHAN_KEY")
        if self.token is None:
            raise ConfigError(f"token: no payment token address; {_where('token')}")

    @property
    def is_null_model(self) -> bool:
        return self.model == NULL_MODEL


# ---------------------------------------------------------------------- helpers


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML config file (flat, or under ``[gateway]``), ``-`` in names as ``_``."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}; pass an existing TOML file")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML ({exc})")
    # Accept both a flat file and one with a [gateway] table.
    table = data.get("gateway", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config: [gateway] in {path} must be a table")
    return {k.replace("-", "_"): v for k, v in table.items()}


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"key_file: cannot read {path}: {exc.strerror}; pass an existing file")


#: An admin token shorter than this is refused: it guards a route that spends the key's gas.
MIN_ADMIN_TOKEN_CHARS = 16


def _read_admin_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"admin_token_file: cannot read {path}: {exc.strerror}; "
                          "pass an existing file (e.g. `openssl rand -hex 32 > admin.token`)")


def _check_admin_token(token: str) -> None:
    """Refuse a guessable token, or one that cannot travel in an HTTP header."""
    if len(token) < MIN_ADMIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() \
            or any(c.isspace() for c in token):
        raise ConfigError(
            f"admin_token: must be at least {MIN_ADMIN_TOKEN_CHARS} printable ASCII characters "
            "without spaces (e.g. `openssl rand -hex 32 > admin.token`); set --admin-token-file, "
            "PAYCHAN_ADMIN_TOKEN_FILE or PAYCHAN_ADMIN_TOKEN"
        )


def _normalize_key(key: str) -> str:
    body = key.strip()
    body = body[2:] if body[:2].lower() == "0x" else body
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise ConfigError("key: must be 32 bytes of hex (64 hex digits, optional 0x)")
    return "0x" + body.lower()


def _is_address(value: str) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 42
        and value[:2].lower() == "0x"
        and all(c in "0123456789abcdefABCDEF" for c in value[2:])
    )


def _convert(name: str, raw: Any, hint: Any) -> Any:
    """Convert ``raw`` (from TOML, env or flags) to the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none", "null")):
            return None
        hint = args[0]
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(str(raw).replace("_", "")) if isinstance(raw, str) else int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(os.path.expanduser(str(raw)))
        if hint is str:
            if not isinstance(raw, (str, int)):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "a whole number", float: "a number",
                Path: "a path", str: "a string"}.get(hint, str(hint))
        raise ConfigError(f"{name}: expected {kind}, got {raw!r}; {_where(name)}") from None
    return raw

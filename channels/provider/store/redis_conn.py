"""Redis store URLs, clients (one server or a Redis Cluster) and the durability check.

A Redis store URL is redis-py's URL plus paychan's own query parameters, which are split off
before redis-py sees the rest:

    redis://HOST:PORT/DB?prefix=NAME                   one server (also rediss://, unix://)
    redis://HOST:PORT?cluster=yes&prefix=NAME          a Redis Cluster: HOST:PORT is any node;
                                                       the client finds the others and follows
                                                       MOVED/ASK redirections (DB must be 0)
    ...&durability=strict|relaxed|trusted              see `check_durability`

`durability`:
    strict  (default) at open, every master must run `appendonly yes` + `appendfsync always`
            (a charge is on disk before it is answered); otherwise the open is refused.
    relaxed accept a server that may lose acknowledged charges (tests, benchmarks); logs a
            loud warning when the server is not durable or cannot be asked.
    trusted do not ask (managed Redis with CONFIG disabled); the operator vouches for the
            server's fsync policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "DURABILITY_MODES",
    "NotDurable",
    "RedisUrl",
    "check_durability",
    "connect",
    "is_redis_outage",
    "parse_redis_url",
]

log = logging.getLogger("paychan.store")

DURABILITY_MODES = ("strict", "relaxed", "trusted")
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("", "0", "no", "false", "off")
_OURS = ("prefix", "cluster", "durability")


class NotDurable(RuntimeError):
    """The Redis server may lose charges it acknowledged, and the URL did not accept that."""


@dataclass(frozen=True)
class RedisUrl:
    """A store URL taken apart: what redis-py connects to and paychan's own parameters."""

    bare: str  # the URL redis-py gets (paychan's parameters removed)
    prefix: str = "paychan"
    cluster: bool = False
    durability: str = "strict"


def parse_redis_url(url: str) -> RedisUrl:
    """Split paychan's parameters (`prefix`, `cluster`, `durability`) off a Redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    prefix = ours.get("prefix", "paychan")
    if not prefix or "{" in prefix or "}" in prefix:
        # a brace would move the Redis Cluster hash tag off the channel id
        raise ValueError(f"store url {url!r}: prefix must be non-empty and free of '{{' and '}}'")
    cluster_s = ours.get("cluster", "").lower()
    if cluster_s not in _TRUE + _FALSE:
        raise ValueError(f"store url {url!r}: cluster={cluster_s!r}; use cluster=yes or leave it out")
    durability = ours.get("durability", "strict").lower()
    if durability not in DURABILITY_MODES:
        raise ValueError(
            f"store url {url!r}: durability={durability!r}; use one of {', '.join(DURABILITY_MODES)}"
        )
    cluster = cluster_s in _TRUE
    if cluster and parts.scheme == "unix":
        raise ValueError(f"store url {url!r}: a Redis Cluster is reached over redis:// or rediss://")
    rest = urlencode([(k, v) for k, v in query if k not in _OURS])
    bare = urlunsplit(parts._replace(query=rest))
    return RedisUrl(bare, prefix, cluster, durability)


def connect(url: RedisUrl) -> Any:
    """A redis-py asyncio client for the URL: `Redis` or `RedisCluster` (same command API)."""
    if url.cluster:
        return RedisCluster.from_url(url.bare, decode_responses=False)
    return aioredis.Redis.from_url(url.bare, decode_responses=False)


async def _fsync_settings(client: Any) -> dict[str, dict[str, str]]:
    """{node: {"appendonly": ..., "appendfsync": ...}} for every master the client writes to."""
    if isinstance(client, RedisCluster):
        targets: list[Any] = list(client.get_primaries())
        out: dict[str, dict[str, str]] = {}
        cluster: Any = client  # the installed stubs lack RedisCluster.config_get
        for node in targets:
            got = await cluster.config_get("append*", target_nodes=node)
            out[node.name] = _strs(got)
        return out
    kw = client.connection_pool.connection_kwargs
    where = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"
    return {str(where): _strs(await client.config_get("append*"))}


def _strs(got: Any) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in dict(got).items()
    }


_FIX = (
    "set `appendonly yes` and `appendfsync always` in redis.conf (or at runtime: "
    "redis-cli CONFIG SET appendonly yes; redis-cli CONFIG SET appendfsync always; "
    "redis-cli CONFIG REWRITE)"
)


async def check_durability(client: Any, url: RedisUrl) -> None:
    """Refuse (NotDurable) a server that could lose an acknowledged charge, unless the URL says
    `durability=relaxed` (loud warning) or `durability=trusted` (not asked)."""
    if url.durability == "trusted":
        log.info("redis store: durability=trusted, appendonly/appendfsync not checked")
        return
    try:
        settings = await _fsync_settings(client)
    except ResponseError as e:  # CONFIG renamed away or denied by an ACL (managed Redis)
        problem = (
            f"CONFIG GET is not available on this Redis ({e}), so paychan cannot check that "
            "it runs `appendonly yes` + `appendfsync always`"
        )
        if url.durability == "relaxed":
            log.warning("redis store: %s; durability=relaxed: going on, charges may be lost", problem)
            return
        raise NotDurable(
            f"{problem}. If the server does fsync every write, add `durability=trusted` to the "
            "store URL; to accept losing acknowledged charges (tests, benchmarks) add "
            "`durability=relaxed`"
        ) from e
    weak = {
        node: s for node, s in settings.items()
        if s.get("appendonly") != "yes" or s.get("appendfsync") != "always"
    }
    if not weak:
        return
    what = "; ".join(
        f"{node}: appendonly {s.get('appendonly', '?')}, appendfsync {s.get('appendfsync', '?')}"
        for node, s in sorted(weak.items())
    )
    if url.durability == "relaxed":
        log.warning(
            "redis store: NOT DURABLE (%s): a crash or power loss can lose charges that were "
            "already answered; accepted because the store URL says durability=relaxed "
            "(tests and benchmarks only)", what,
        )
        return
    raise NotDurable(
        f"Redis would lose acknowledged charges ({what}): paychan needs every charge on disk "
        f"before it answers. Fix: {_FIX}. To run anyway (tests, benchmarks), add "
        "`durability=relaxed` to the store URL"
    )


def is_redis_outage(exc: BaseException) -> bool:
    """Whether `exc` says the Redis server is away (down, restarting, still loading its AOF,
    a cluster without a master for a slot) rather than that the request was wrong: the
    gateway answers 503 for these and reports itself unready.

        >>> is_redis_outage(redis.exceptions.ConnectionError("Connection refused"))
        True
    """
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterDownError))

"""Calling a running gateway's admin routes: ``paychan settle --gateway`` and ``paychan
earnings --gateway``.

    token = admin_token(args.admin_token_file, os.environ)
    report = await call_admin("http://127.0.0.1:8402", "POST", "/admin/settle", token)

Every failure is one CliError line that names the fix: the gateway unreachable, a URL that is
not one, no admin route (the gateway was started without a token), a missing or wrong token,
the gateway unable to act now (503), or any other answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.cli._common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError

__all__ = ["admin_token", "call_admin", "gateway_error"]


def admin_token(path: Path | None, env: Any) -> str:
    """The admin token: ``--admin-token-file``, else the file PAYCHAN_ADMIN_TOKEN_FILE names,
    else PAYCHAN_ADMIN_TOKEN.

        token = admin_token(Path("admin.token"), os.environ)
    """
    if path is None and env.get("PAYCHAN_ADMIN_TOKEN_FILE"):
        path = Path(env["PAYCHAN_ADMIN_TOKEN_FILE"])
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise CliError(f"--admin-token-file: cannot read {path}: {exc.strerror}; pass the "
                           "file the gateway was started with", EXIT_USAGE) from None
    else:
        token = env.get("PAYCHAN_ADMIN_TOKEN", "").strip()
    if not token:
        raise CliError("--admin-token-file: no admin token; pass --admin-token-file F (the file "
                       "the gateway was started with) or set PAYCHAN_ADMIN_TOKEN", EXIT_USAGE)
    return token


async def call_admin(url: str, method: str, route: str, token: str, *, what: str,
                     read_timeout_s: float = 60.0) -> dict[str, Any]:
    """``method {url}{route}`` with the admin token; the JSON report with ``gateway`` added.
    ``what`` names the action in errors ("settle": "cannot settle now (503): ...").

    Raises CliError: EXIT_USAGE (a bad URL, no admin route, no or wrong token),
    EXIT_UNREACHABLE (the gateway, or its chain, cannot be reached), EXIT_FAILED (anything
    else the gateway answered, e.g. a transaction that failed on-chain).
    """
    import aiohttp

    base = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, base + route, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            status, body = response.status, await response.read()
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise CliError(f"--gateway: cannot reach {base} ({type(exc).__name__}: {exc}); start the "
                       "gateway or pass its URL", EXIT_UNREACHABLE) from None
    except aiohttp.InvalidURL:
        raise CliError(f"--gateway: {url!r} is not a URL; pass e.g. http://127.0.0.1:8402",
                       EXIT_USAGE) from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status == 200 and isinstance(data, dict):
        return {"gateway": base, **data}
    raise gateway_error(base, status, data, call=f"{method} {route}", what=what)


def gateway_error(base: str, status: int, data: Any, *, call: str, what: str) -> CliError:
    """The one-line CliError for a gateway's refusal of ``call`` (``POST /admin/settle``)."""
    said = data.get("message", "") if isinstance(data, dict) else ""
    if status == 404:
        return CliError(f"--gateway: {base} has no admin route (404); start the gateway with "
                        f"--admin-token-file F (or PAYCHAN_ADMIN_TOKEN) to enable {call}",
                        EXIT_USAGE)
    if status in (401, 403):
        which = "no token was sent" if status == 401 else "the token is wrong"
        return CliError(f"--admin-token-file: {base} refused it ({status}: {which}); pass the "
                        "token file the gateway was started with", EXIT_USAGE)
    if status == 503:
        return CliError(f"--gateway: {base} cannot {what} now (503): {said or 'unavailable'}",
                        EXIT_UNREACHABLE)
    return CliError(f"--gateway: {base} answered {status}: {said or 'no JSON report'}", EXIT_FAILED)

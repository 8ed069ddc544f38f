"""The payment token: checked on the chain before a gateway serves, and its amounts shown
the way people read them (token units with the symbol, base units beside)::

    token = await read_token(w3, "0x036C...")        # TokenError if not an ERC-20 with EIP-3009
    token.format(1000)                               # '0.001 USDC (1000 base units)'
    parse_amount("0.001USDC", token.decimals, token.symbol)   # 1000
    parse_amount("1000", 6, "USDC")                  # 1000 (a bare whole number: base units)

Amounts on the wire, in the ledger and in the config are base units (the token's smallest
unit; 6 decimals for USDC, so 1000 base units = 0.001 USDC); only people see token units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # web3 loads with the check, not with the CLI
    from web3 import AsyncWeb3

__all__ = ["TokenError", "TokenInfo", "format_amount", "parse_amount", "read_token", "token_units"]


class TokenError(ValueError):
    """The token address is not a usable payment token; the message names the fix."""


def format_amount(units: int, decimals: int | None = None, symbol: str | None = None) -> str:
    """``units`` base units as people read them; base units alone when the token is unknown.

        >>> format_amount(1000, 6, "USDC")
        '0.001 USDC (1000 base units)'
        >>> format_amount(1000)
        '1000 base units'
    """
    base = f"{units} base unit{'' if units == 1 else 's'}"
    if decimals is None or symbol is None:
        return base
    return f"{token_units(units, decimals, symbol)} ({base})"


def token_units(units: int, decimals: int, symbol: str, *, grouped: bool = False) -> str:
    """``units`` base units in token units with the symbol, no trailing zeros; ``grouped``
    adds thousands separators.

        >>> token_units(1_234_500_000, 6, "USDC", grouped=True)
        '1,234.5 USDC'
    """
    text = format(Decimal(units).scaleb(-decimals), ",f" if grouped else "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {symbol}"


_AMOUNT = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z][A-Za-z0-9.]*)?\s*$")


def parse_amount(text: str, decimals: int, symbol: str, *, field: str = "price") -> int:
    """Base units from ``"1000"`` (base units) or ``"0.001USDC"`` / ``"0.001 USDC"`` (token
    units, with the token's symbol); ValueError naming ``field`` and the fix otherwise.

        >>> parse_amount("0.001USDC", 6, "USDC")
        1000
    """
    match = _AMOUNT.match(text)
    if match is None:
        raise ValueError(f"{field}: {text!r} is neither base units (e.g. 1000) nor token units "
                         f"with the symbol (e.g. 0.001{symbol})")
    number, unit = match.group(1).replace("_", ""), match.group(2)
    if unit is None:
        if "." in number:
            raise ValueError(f"{field}: {text!r} has a decimal point but no symbol; write base "
                             f"units as a whole number, or token units as {number}{symbol}")
        return int(number)
    if unit.upper() != symbol.upper():
        raise ValueError(f"{field}: {text!r} is in {unit}, but the token is {symbol}; write "
                         f"{number}{symbol}, or base units as a whole number")
    try:
        units = Decimal(number).scaleb(decimals)
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"{field}: {text!r} is not a number") from None
    if units != units.to_integral_value():
        raise ValueError(f"{field}: {text!r} is finer than {symbol}'s {decimals} decimals "
                         f"(the smallest amount is {format_amount(1, decimals, symbol)})")
    return int(units)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What the chain says about the payment token."""

    address: str  # checksummed
    symbol: str
    decimals: int
    name: str  # the EIP-712 domain the deposits are signed under
    version: str

    def format(self, units: int) -> str:
        return format_amount(units, self.decimals, self.symbol)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "symbol": self.symbol, "decimals": self.decimals}


_ERC20_EIP3009_ABI = [
    {"type": "function", "name": "decimals", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "uint8"}]},
    {"type": "function", "name": "symbol", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "authorizationState", "stateMutability": "view",
     "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
     "outputs": [{"name": "", "type": "bool"}]},
]

_ZERO_ADDRESS = "0x" + "00" * 20


async def read_token(w3: AsyncWeb3[Any], address: str) -> TokenInfo:
    """The token at ``address``, checked to be an ERC-20 (``decimals()``, ``symbol()``) with
    EIP-3009 (``authorizationState(address,bytes32)``, which every EIP-3009 token exposes;
    its functions cannot be found in a proxy's bytecode, so the check calls, never scans).

    Raises TokenError naming the address and what is missing; ConnectionError when the node
    stops answering.
    """
    from web3 import AsyncWeb3

    from channels.provider import is_transport_error
    from gateway.chain_setup import token_domain

    checksummed = AsyncWeb3.to_checksum_address(address)
    fix = "pass the address of the payment token (an ERC-20 with EIP-3009, e.g. USDC)"
    try:
        chain_id = int(await w3.eth.chain_id)
        if not bytes(await w3.eth.get_code(checksummed)):
            raise TokenError(f"token: no contract at {checksummed} on chain {chain_id}; {fix}")
        contract = w3.eth.contract(address=checksummed, abi=_ERC20_EIP3009_ABI)
        try:
            decimals = int(await contract.functions.decimals().call())
            symbol = str(await contract.functions.symbol().call())
        except Exception as exc:
            if is_transport_error(exc):
                raise
            raise TokenError(f"token: the contract at {checksummed} is not an ERC-20 token "
                             f"(decimals() and symbol() do not answer); {fix}") from None
        try:
            await contract.functions.authorizationState(_ZERO_ADDRESS, bytes(32)).call()
        except Exception as exc:
            if is_transport_error(exc):
                raise
            raise TokenError(f"token: {symbol} at {checksummed} is an ERC-20 without EIP-3009 "
                             "(authorizationState() does not answer), so channels cannot be "
                             f"funded with it; {fix}") from None
        try:
            name, version = await token_domain(w3, checksummed)
        except Exception as exc:
            if is_transport_error(exc):
                raise
            raise TokenError(f"token: {symbol} at {checksummed} has no EIP-712 domain "
                             f"(neither eip712Domain() nor name() answers); {fix}") from None
    except TokenError:
        raise
    except Exception as exc:
        if is_transport_error(exc):
            raise ConnectionError(f"rpc_url: the node stopped answering while the token was "
                                  f"checked ({type(exc).__name__}: {exc})") from None
        raise
    return TokenInfo(checksummed, symbol, decimals, name, version)

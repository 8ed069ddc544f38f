"""The paychan gateway: the aiohttp application that sells classifications over x402."""

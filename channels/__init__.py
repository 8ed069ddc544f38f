"""The x402 batch-settlement protocol core, shared by the gateway and the payer SDK."""

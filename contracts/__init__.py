"""Solidity sources, compiled artifacts and deploy helpers for the settlement contracts."""

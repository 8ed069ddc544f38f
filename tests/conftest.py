"""Fixtures shared by every test area. Area-specific fixtures live in each area's conftest."""

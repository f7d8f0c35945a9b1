"""Shared records, Redis keys, streams protocol, registry and blob store (no torch, no fastapi)."""

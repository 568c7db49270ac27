"""Operator commands: create tenants, keys and channels, and seed the embedded demo."""

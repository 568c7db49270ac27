"""Operator commands: create tenants, keys and channels."""

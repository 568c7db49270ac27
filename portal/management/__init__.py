"""Management commands of the portal app."""

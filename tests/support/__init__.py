"""Test support shared across areas (databases, services)."""

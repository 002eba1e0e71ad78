"""A typed Python client of the gradlab HTTP API (httpx)."""

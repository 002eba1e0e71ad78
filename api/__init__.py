"""The HTTP API (FastAPI): app factory, routers per resource, schemas, errors."""

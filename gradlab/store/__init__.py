"""Persistence shared by the API and the worker: models, sessions, repositories (flush, never commit)."""

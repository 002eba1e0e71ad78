"""Persistence shared by the API and the worker.

Models, sessions, repositories (which flush and never commit).
"""

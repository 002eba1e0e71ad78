"""The web dashboard: one page, its built script and style (see dashboard/ for the source)."""

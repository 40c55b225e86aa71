"""Alembic migrations of the store (``service.db.migrate`` runs them; no alembic.ini needed)."""

"""The SQL adapter: SQLite (embedded) and PostgreSQL (scale-out) on SQLAlchemy Core."""

"""Where the gateway keeps its state: the database (SQLite or PostgreSQL) and its schema."""

from tensorwasm_gateway.state.migrations import COMPONENT, MIGRATIONS
from tensorwasm_gateway.state.open import open_database

__all__ = ["COMPONENT", "MIGRATIONS", "open_database"]

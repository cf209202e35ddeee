"""The real database and storage engines, started for tests."""

"""Tests against a real Postgres (embedded unless DATABASE_URL), in process."""

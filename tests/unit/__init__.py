"""Pure tests: no Postgres, no processes."""

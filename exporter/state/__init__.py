"""The exporter's durable state in Postgres: schema, counted runs, sessions, series, cursors, outboxes."""

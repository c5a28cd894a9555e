"""agno 2.x releases, each in a virtualenv of its own."""

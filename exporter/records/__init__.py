"""Typed records of agno runs, and the one place agno's stored JSON is parsed."""

"""Probe agents: agent specs, the cron scheduler, the simulated model server."""

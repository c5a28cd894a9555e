"""The HTTP face: /metrics, /healthz, /readyz, the landing page, TLS and basic auth."""

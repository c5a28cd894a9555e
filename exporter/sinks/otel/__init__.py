"""The OpenTelemetry sink: span layout and building, agno's own spans, OTLP delivery."""

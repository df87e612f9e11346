"""The operators' monthly usage report: aggregation in PostgreSQL, HTML with plots, CSV and JSON."""

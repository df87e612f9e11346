"""Monitoring: Prometheus scrape jobs and alert rules made from the site's plan, and the host facts
that node exporter's textfile collector publishes."""

"""Report tests on a throwaway PostgreSQL cluster."""

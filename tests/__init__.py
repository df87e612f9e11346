"""The unit, playbook and report tests, and the fixtures they share with molecule and the benchmarks."""

"""Benchmarks of rbm-relay, run by hand (`python -m bench.webhook`, …); see README.md."""

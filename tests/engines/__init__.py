"""Real storage engines for tests and benchmarks, started on loopback in temp directories."""

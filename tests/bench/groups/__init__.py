"""Benchmark groups: every module here registers its groups with `@harness.group(...)`."""

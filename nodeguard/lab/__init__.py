"""Test hosts in network namespaces of nodeguard's own, for the demo, tests and benchmarks."""

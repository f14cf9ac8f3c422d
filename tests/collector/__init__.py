"""Collector tests: real gRPC, TLS, SQLite, rsyslog and nats-server, started by the tests."""

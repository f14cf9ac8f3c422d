"""Delivery of the violation stream from a producer (node agent, ``nodeguard run``) to the
collector: a bounded on-disk spool (:mod:`.spool`), the wire framing of its records
(:mod:`.framing`), the gRPC publisher thread (:mod:`.publisher`) with its reconnect
backoff (:mod:`.backoff`), and the producer front end the agent and ``run`` feed
(:mod:`.producer`). See docs/agent-config.md (collector link) for the guarantees.
"""

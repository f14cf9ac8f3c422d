"""The collector's SIEM sinks: each delivers every stored violation, in store order, to
one destination (a JSON-lines file, syslog/CEF, Splunk HEC, NATS JetStream).

Delivery is driven by a persisted cursor per sink (:mod:`.runner`); the sink modules
only render and send a batch. See docs/sinks.md.
"""

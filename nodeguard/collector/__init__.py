"""The collector: receives producers' violation streams over mutual TLS
(:mod:`.server`, :mod:`.service`, :mod:`.identity`), stores every batch durably before
acknowledging it (:mod:`.store`), and forwards events to SIEM sinks (:mod:`.sinks`).
Configuration in :mod:`.config`, metrics in :mod:`.metrics`; see docs/collector.md."""

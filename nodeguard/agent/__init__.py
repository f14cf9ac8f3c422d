"""The per-node agent (``nodeguard agent``): configuration, pod-to-policy selection, the
watched policy directory, enforcement of pods found through CRI, and the local API."""

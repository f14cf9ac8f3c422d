"""Generated CRI modules (package runtime.v1); see nodeguard/proto/__init__.py."""

"""`nodeguard demo`: an embedded, self-contained tour of the guard."""

"""The wire: message keys, encodings and payloads (what crosses between client and server)."""

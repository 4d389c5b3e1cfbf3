"""The auth service: API keys, short-lived broker tokens, revocation."""

"""Migration techniques, one module each, registered by name."""

"""The Ray actors: thin shells that hold state and call the pure core. Named by role
(`source:<host>`, `link:<a>-><b>`, `guest:<vm>`) so the Ray dashboard shows who is who."""

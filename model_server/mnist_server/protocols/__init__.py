"""Request and response formats, one module per protocol: pure functions from parsed JSON to a
validated batch, and from probabilities to the protocol's response body. No Flask, no I/O."""

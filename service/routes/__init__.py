"""HTTP routes. Each one parses, calls one function, and shapes the response."""

"""Weight converters between reference implementations and recurlm models."""

"""Process isolation for untrusted, model-written code."""

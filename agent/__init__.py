"""The harmony agent loop."""

"""Delivery: lanes that lease due mail, upstream sessions, and what they tell the operator."""

"""The configuration file: value types, text positions, and the validated settings tree."""

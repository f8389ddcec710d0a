"""Data: archives, conversion, fold lists, episodes and transforms."""

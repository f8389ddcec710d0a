"""Generated data sets in the exact layout of the real archives."""

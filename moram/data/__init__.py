"""Task streams and dataset readers."""

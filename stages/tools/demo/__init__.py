"""`make demo`: click to segment in a browser, on the MNN-only runtime (server.py, page in static/)."""

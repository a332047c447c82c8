"""Conversion to MNN, as a library: the converter's command line, static-shape flags, the converter and smoke-run
tasks a child process runs (stages/core/isolate.py), and what a conversion lost. The convert, quantize and profile
stages call it; no stage module imports another."""

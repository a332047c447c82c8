"""Tables of test inputs, one row per input."""

"""Robustness tests: damaged input, changing files, faults; marked `robustness`."""

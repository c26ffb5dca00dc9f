"""Load generator for the ML.ENERGY workloads."""

"""The simulated inference engine and GPU: continuous batching on a roofline, calibrated to the ML.ENERGY study."""

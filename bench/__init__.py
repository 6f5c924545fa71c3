"""greenroom benchmark harness."""

"""How numeric work uses the machine's cores (``SerialCompute``)."""

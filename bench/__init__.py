"""Performance benchmarks: run from the repository root as ``python -m bench.<script>`` (bench/RESULTS.md)."""

"""`python -m benchmarks [args]`: the engine-vs-bare benchmark (benchmarks/engine_vs_bare.py)."""
import sys

from benchmarks.engine_vs_bare import main

raise SystemExit(main(sys.argv[1:]))

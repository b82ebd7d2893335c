"""`python -m bench`: run the benchmarks (see bench.harness.main)."""
import sys

from bench.harness import main

sys.exit(main())

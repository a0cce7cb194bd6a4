"""python -m benchmarks.overhead: the overhead benchmark (the code lives in steerable/bench.py so that
the installed `steerable bench` command runs the same thing)."""

import sys

from steerable.bench import main

if __name__ == "__main__":
    sys.exit(main())

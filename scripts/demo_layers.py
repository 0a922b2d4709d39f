"""The course's worked examples, computed by the library.

    python -m scripts.demo_layers

Prints the output-size and parameter-count exercises, the 2x2 filter over a 3x3 image,
the max-pool exercise, the depthwise-separable multiplication counts (taken from the
modules' kernel and output shapes), and the course's box blur and edge detector applied
to a real 8x8 digit from scikit-learn's `load_digits`. Shapes are traced with
`jax.eval_shape`, never run, so the whole demo takes a few seconds on a CPU. The
examples are cnn/demo.py's.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.parse(cli.parser("scripts.demo_layers", __doc__), argv, overrides=False)
  from cnn import demo  # pylint: disable=import-outside-toplevel
  demo.run()
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""A trained network as a fixed feature extractor: embeddings of a split to .npz.

    python -m scripts.extract_features --workdir runs/lenet --out feats.npz
    python -m scripts.extract_features --workdir runs/lenet --split train \\
        --source "npz:new/train-*.npz|new/test-*.npz" --out new_train.npz
    python -m scripts.extract_features --workdir runs/lenet --layer conv2 --out maps.npz

Without --layer the features are the penultimate activations, what the classifier
head receives (LeNet-5: the 84 ReLU outputs of fc4; a ResNet: the pooled features).
--layer NAME takes that module's output instead (e.g. conv2: (N, 10, 10, 16) maps).
The .npz holds ``features`` (float32, N x ...), ``labels`` (int32, N) and ``layer``.
Images of --source are normalised with the run's own statistics.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from cnn import cli
from cnn.errors import exit_on_user_error


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = cli.parser("scripts.extract_features", __doc__)
  parser.add_argument("--workdir", required=True, help="a trained run's workdir")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--split", default="eval", choices=("train", "eval", "test"))
  parser.add_argument("--source", default=None,
                      help="another cnn.data source to embed (default: the run's data)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--layer", default=None,
                      help="a module path (default: the head's input, the penultimate "
                           "features)")
  parser.add_argument("--input", action="store_true",
                      help="with --layer: that module's input instead of its output")
  parser.add_argument("--best", action="store_true", help="the best checkpoint")
  parser.add_argument("--batch_size", type=int, default=256)
  args, _ = cli.parse(parser, argv, overrides=False)
  with exit_on_user_error():
    cli.prepare_process()   # compilation cache, host memory
    from cnn import evaluation  # pylint: disable=import-outside-toplevel
    result = evaluation.extract_features(
        args.workdir, split=args.split, source=args.source, data_dir=args.data_dir,
        layer=args.layer, what="input" if args.input else "output", best=args.best,
        batch_size=args.batch_size)
    out = pathlib.Path(args.out)
    if out.suffix != ".npz":   # np.savez would add it
      out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **result)
  print(f"{out}: features {result['features'].shape} of layer {result['layer']}, "
        f"labels {result['labels'].shape}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

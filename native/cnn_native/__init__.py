"""Where the compiled native convolutions are; cnn/conv_native.py loads and registers them."""
import glob
import os


def library_path(stem: str = "_conv") -> str:
  """A compiled library's path (`_conv`: the project's kernels, `_onednn`: the oneDNN
  calls); FileNotFoundError when the build did not produce it."""
  here = os.path.dirname(os.path.abspath(__file__))
  found = sorted(glob.glob(os.path.join(here, f"{stem}*.so")))
  if not found:
    raise FileNotFoundError(f"no compiled {stem} library in {here} (the build failed or "
                            "was skipped; reinstall with: pip install ./native)")
  return found[0]

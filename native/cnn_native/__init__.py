"""Where the compiled native convolution is; cnn/conv_native.py loads and registers it."""
import glob
import os


def library_path() -> str:
  """The compiled kernel's path; FileNotFoundError when the build did not produce it."""
  here = os.path.dirname(os.path.abspath(__file__))
  found = sorted(glob.glob(os.path.join(here, "_conv*.so")))
  if not found:
    raise FileNotFoundError(f"no compiled kernel in {here} (the build failed or was "
                            "skipped; reinstall with: pip install ./native)")
  return found[0]

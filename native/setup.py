"""Builds the two native convolution libraries of cnn.conv (see pyproject.toml):

- cnn_native/_conv*.so from conv.cc, the project's own kernels ("native"), and
- cnn_native/_onednn*.so from onednn.cc, the calls into oneDNN ("onednn").

Both extensions are `optional`: when one does not compile (no compiler, an unsupported
flag) pip still installs the package, without that library, and cnn.conv's impl falls
back to "gemm" with one warning line at run time. Neither links its library (OpenBLAS,
oneDNN): cnn/conv_native.py loads those first, from their wheels.

`-march=native`: pip builds it on the machine that runs it (a local directory is
never taken from pip's wheel cache), so the kernels may use every instruction that
machine has (AVX2/FMA here). CNN_NATIVE_CFLAGS replaces the optimisation flags.
"""
import os

from setuptools import Extension, setup

FLAGS = os.environ.get("CNN_NATIVE_CFLAGS", "-O3 -march=native").split()


def extension(name: str, source: str) -> Extension:
  return Extension(
      f"cnn_native.{name}", sources=[f"cnn_native/{source}"], include_dirs=["include"],
      language="c++", extra_compile_args=["-std=c++17", "-Wno-attributes",
                                          "-Wno-return-type", *FLAGS],
      extra_link_args=["-pthread"], optional=True)


setup(ext_modules=[extension("_conv", "conv.cc"), extension("_onednn", "onednn.cc")])

"""Builds cnn_native/conv.cc into cnn_native/_conv*.so (see pyproject.toml).

The extension is `optional`: when it does not compile (no compiler, an unsupported
flag) pip still installs the package, without the library, and cnn.conv's "native"
falls back to "gemm" with one warning line at run time.

`-march=native`: pip builds it on the machine that runs it (a local directory is
never taken from pip's wheel cache), so the kernel may use every instruction that
machine has (AVX2/FMA here). CNN_NATIVE_CFLAGS replaces the optimisation flags.
"""
import os

from setuptools import Extension, setup

FLAGS = os.environ.get("CNN_NATIVE_CFLAGS", "-O3 -march=native").split()

setup(ext_modules=[Extension(
    "cnn_native._conv", sources=["cnn_native/conv.cc"], include_dirs=["include"],
    language="c++", extra_compile_args=["-std=c++17", "-Wno-attributes",
                                        "-Wno-return-type", *FLAGS],
    extra_link_args=["-pthread"], optional=True)])

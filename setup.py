# Metadata lives in pyproject.toml; this file only exists to declare compiled extensions.
from setuptools import Extension, setup

setup(ext_modules=[Extension("agents.encodings._xbzrle", ["agents/encodings/_xbzrle.c"], extra_compile_args=["-O3"]),
                   Extension("agents.datapath._pagecopy", ["agents/datapath/_pagecopy.c"], depends=["agents/datapath/xxhash.h"],
                             extra_compile_args=["-O3"])])

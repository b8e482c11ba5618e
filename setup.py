"""vlpjax: image-text pretraining in JAX/Flax NNX."""

from setuptools import find_packages, setup

setup(
    name="vlpjax",
    version="0.1.0",
    description="Image-text pretraining (VLP) in JAX and Flax NNX",
    packages=find_packages(include=["vlpjax", "vlpjax.*"]),
    license="Apache-2.0",
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",  # NNX API: pin the minor version
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.10,<0.3",
        "tensorflow-datasets>=4.9.7,<5",
        "transformers>=4.50,<6",
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "ml-collections>=1.0,<2",
        "tqdm>=4.66,<5",
        "importlib_resources>=6",  # tensorflow-datasets needs it for package builders, without declaring it
        "pillow>=10,<13",  # image decoding in the input pipeline
        "tensorboardX>=2.6,<3",  # TensorBoard event files without TensorFlow
        "flatbuffers>=24.3",  # jax.export (de)serialisation: vlpjax export --format stablehlo
    ],
    extras_require={
        # torch is pinned: 2.13.0 is the CPU build; an open range pulls a CUDA build.
        # ruff is pinned: its rule set changes between releases, and `make lint` must not drift.
        # pycocoevalcap: the COCO caption evaluation, the reference the BLEU / CIDEr-D tests compare with.
        # pytest-xdist: `make test` runs the suite on 2 workers (compile-bound, one core each).
        "test": ["pytest>=8,<10", "pytest-xdist==3.8.0", "torch==2.13.0", "ruff==0.17.6", "pycocoevalcap==1.2"],
    },
    entry_points={"console_scripts": ["vlpjax=vlpjax.cli:main"]},
)

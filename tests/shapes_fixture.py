"""A tiny synthetic_shapes dataset built once per test session."""

import pytest

from vlpjax.data.builders import build_synthetic_shapes

TINY_DATA = dict(image_size=32, train_size=512, test_size=64)


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    build_synthetic_shapes(data_dir, **TINY_DATA)
    return data_dir

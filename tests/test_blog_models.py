"""The post's networks: every figure from hand arithmetic written next to it."""
import pytest

from inspector import inspect
from inspector.closed_forms import conv_then_dense, dense_stack
from models import BlogANN, BlogCNN, ConvFirstLayer, DenseFirstLayer


def test_blog_ann():
    r = inspect(BlogANN())
    assert r.total_params == 16 * 8 + 8 + 8 * 2 + 2 == 154
    assert r.total_macs == 16 * 8 + 8 * 2 == 144
    assert r.total_flops == 2 * 144
    assert r.layer("net.1").params == 136 and r.layer("net.3").params == 18
    assert not r.crosscheck()


def test_blog_cnn():
    r = inspect(BlogCNN())
    assert r.total_params == (3 * 3 * 1 * 2 + 2) + (8 * 2 + 2) == 38
    # conv: 2x2 positions x 2 filters x 9 taps = 72; dense 8 x 2 = 16
    assert r.total_macs == 2 * 2 * 2 * 9 + 8 * 2 == 88
    assert r.layer("net.0").output_shapes == ((1, 2, 2, 2),)
    assert not r.crosscheck()


def test_blog_cnn_pooled():
    r = inspect(BlogCNN(pool=2))
    assert r.total_params == 20 + (2 * 2 + 2) == 26
    assert r.total_macs == 72 + 2 * 2 == 76


def test_first_layers_and_ratio():
    dense = inspect(DenseFirstLayer(), device="meta")
    conv = inspect(ConvFirstLayer(), device="meta")
    assert dense.total_params == 224 * 224 * 3 * 100 + 100 == 15_052_900
    assert conv.total_params == 3 * 3 * 3 * 64 + 64 == 1_792
    assert round(dense.total_params / conv.total_params, 2) == 8400.06  # the post prints "8404x"
    assert dense.total_macs == 150_528 * 100
    assert conv.total_macs == 222 * 222 * 64 * 27  # valid padding: 222 x 222 positions


@pytest.mark.parametrize("batch", [1, 3])
def test_whole_network_closed_forms(batch):
    assert dense_stack([16, 8, 2], batch).macs == batch * 144
    assert dense_stack([16, 8, 2]).params == 154
    assert conv_then_dense(4, 1, 2, 3, 2, batch=batch).macs == batch * 88
    assert conv_then_dense(4, 1, 2, 3, 2, pool=2).params == 26
    r = inspect(BlogCNN(side=8, channels=3, filters=4), input_size=(batch, 3, 8, 8))
    assert r.layer("").expected_macs == r.total_macs == batch * (6 * 6 * 4 * 27 + 144 * 2)

import pytest

import effjax.attention as ea
from effjax.attention import registry


def test_dense_is_registered():
    assert ea.get("dense") is ea.dot_product_attention
    assert ea.resolve("dense") is ea.resolve(ea.dot_product_attention)


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match=r"unknown attention 'nope'; registered: .*dense"):
        ea.get("nope")


def test_register_as_decorator_and_refuse_silent_overwrite(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @ea.register("mine")
    def mine(query, key, value, **kw):
        return ea.dot_product_attention(query, key, value, **kw)

    assert ea.get("mine") is mine
    with pytest.raises(ValueError, match="already registered"):
        ea.register("mine", ea.dot_product_attention)
    ea.register("mine", ea.dot_product_attention, overwrite=True)
    assert ea.get("mine") is ea.dot_product_attention

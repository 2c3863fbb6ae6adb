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
    with pytest.raises(ValueError, match="'mine' is already registered"):
        ea.register("mine", lambda q, k, v, **kw: q)
    # One function, one name: a registered function stands for its variant.
    with pytest.raises(ValueError, match="already registered as 'dense'"):
        ea.register("other", ea.dot_product_attention)
    with pytest.raises(ValueError, match="'dense' already has a core"):
        registry.attach("dense", core=object())

import pytest

from taosr.errors import ConfigError
from taosr.registry import Registry


def test_register_lookup_and_duplicate():
    reg = Registry("widget", "model.widget")
    reg.register("a", 1)

    @reg.register("b", options=("x",))
    def b(x=0):
        return x + 1

    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "b" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match=r"^model.widget: 'c' is unknown; expected one of a, b$"):
        reg.get("c")


def test_declared_options_refuse_unknown_ones():
    reg = Registry("estimator", "model.est.name")
    reg.register("e", lambda lam=0.5: lam * 2, options=("lam",))
    assert reg.build("e", {"lam": 2.0}) == 4.0
    with pytest.raises(ConfigError, match=r"^model.est.lamb: not an option of estimator 'e' \(it takes lam\)$"):
        reg.build("e", {"lamb": 2.0})
    reg.register("free", lambda **kw: kw)  # undeclared: not checked
    assert reg.build("free", {"anything": 1}) == {"anything": 1}

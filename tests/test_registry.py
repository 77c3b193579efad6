"""The registry behind every table of formulas: subclasses find their nearest registered base, a key
is registered once, and answers worked out from the table follow it when it changes."""
import pytest

from inspector.errors import RegistryError
from inspector.registry import Registry


class Base:
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


def test_nearest_registered_base_and_its_answers_follow_the_table():
    reg: Registry[type, object] = Registry("layers")

    @reg.register(Base)
    def base_form():
        return "base"

    assert reg.lookup_key(GrandChild) is Base and reg.lookup_type(GrandChild) is base_form
    assert reg.lookup_type(int) is None and reg.lookup_key(int) is None
    version = reg.version

    @reg.register(Child)  # a nearer base: the answers cached for GrandChild must not stay
    def child_form():
        return "child"

    assert reg.version > version
    assert reg.lookup_key(GrandChild) is Child and reg.lookup_type(GrandChild) is child_form
    assert reg.remove(Child) is child_form
    assert reg.lookup_type(GrandChild) is base_form and reg.lookup_key(Child) is Base
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(Base)(child_form)
    assert list(reg) == [Base] and len(reg) == 1 and Base in reg and reg.get(Base) is base_form

"""The IR: ``ModelGraph``, ``PermGroup``, ``Slot``, ``Site``, ``Blocks``, ``Role``, ``OpKind``."""

from hetsurgery.ir.graph import ModelGraph, owner_of
from hetsurgery.ir.group import PermGroup
from hetsurgery.ir.opkind import OpKind
from hetsurgery.ir.slots import Blocks, Role, Site, Slot

__all__ = ["Blocks", "ModelGraph", "OpKind", "PermGroup", "Role", "Site", "Slot", "owner_of"]

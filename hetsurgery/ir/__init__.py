"""The IR: ``ModelGraph``, ``PermGroup``, ``Slot``, ``Site``, ``Blocks``, ``Role``, ``OpKind``, ``NodeFacts``,
``Unit``, ``Stage``, ``FrontEnd``."""

from hetsurgery.ir.facts import Activation, NodeFacts, Range
from hetsurgery.ir.front_end import FrontEnd, FrontEndKind
from hetsurgery.ir.graph import ModelGraph, owner_of
from hetsurgery.ir.group import MODEL_OUTPUT, Capability, PermGroup
from hetsurgery.ir.opkind import OpKind
from hetsurgery.ir.slot_maps import (
    SlotMaps,
    later_offsets_first,
    pad_params,
    slots_by_param,
    transform_params,
)
from hetsurgery.ir.slots import Blocks, Role, Site, Slot
from hetsurgery.ir.units import Stage, Unit, UnitKind

__all__ = ["MODEL_OUTPUT", "Activation", "Blocks", "Capability", "FrontEnd", "FrontEndKind", "ModelGraph", "NodeFacts", "OpKind", "PermGroup", "Range",
           "Role", "Site", "Slot", "SlotMaps", "Stage", "Unit", "UnitKind", "later_offsets_first", "owner_of",
           "pad_params", "slots_by_param", "transform_params"]

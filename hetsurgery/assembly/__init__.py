"""Model assembly (MAL): a base absorbs units of donors of other widths and depths, and how far it can lean
towards one (``find_lambda_threshold``). Above ``merging``: a donor is balanced in depth by merge's balancing
and carried into the base's channels by merge's width methods."""

from hetsurgery.assembly.assembler import AssemblyResult, Donor, assemble
from hetsurgery.assembly.lambda_threshold import LambdaThreshold, find_lambda_threshold
from hetsurgery.assembly.options import AssemblyOptions

__all__ = ["AssemblyOptions", "AssemblyResult", "Donor", "LambdaThreshold", "assemble", "find_lambda_threshold"]

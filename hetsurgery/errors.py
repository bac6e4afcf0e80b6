"""The exceptions hetsurgery raises. Each message names the model, the node and what to do."""

from __future__ import annotations


class HetsurgeryError(Exception):
    """Base class of every error hetsurgery raises on purpose."""


class InvalidInput(HetsurgeryError):
    """The caller's input cannot be used as given (a model, a file, an option); the command line exits with 2.

    A marker base: ``MergeInputError``, ``TracingError`` and ``export.InputError`` are among its subclasses.
    Errors that are not ``InvalidInput`` mean that a valid operation failed (exit code 1).
    """


class TracingError(InvalidInput):
    """A model could not be traced into a ModelGraph (untraceable construct, bad example input)."""


class IRError(HetsurgeryError):
    """A ModelGraph is inconsistent; raised by ``ModelGraph.verify``."""


class PassError(HetsurgeryError):
    """A pass refused its input or failed; the message names the pass and the ones before it."""


class MergeError(HetsurgeryError):
    """Models cannot be merged as asked (shapes differ, NaN weights, a frozen group differs in width)."""


class MergeInputError(MergeError, InvalidInput):
    """A merge refused before any work: the models, options, weights or widths asked for do not fit."""


class ExportError(HetsurgeryError):
    """Saving, loading or exporting a model failed (bad package, ONNX parity above tolerance)."""


class UnalignedGroupWarning(UserWarning):
    """A merge left a group of hidden channels as it was (frozen), so every method averaged it unaligned; the
    message says why and what to do (``merge.driver.unaligned_groups``)."""

"""The operations lab configs name as ``mei.legacy.ops.<Name>``; they live in modules named for their role."""

from ..backgrounds import WhiteNoiseBackground
from ..postprocessing import ChangeNorm, ChangeStd, ClipRange
from ..preconditions import DivideByMeanOfAbsolute, FourierSmoothing, GaussianBlur, MultiplyBy
from ..regularizers import LpNorm, TotalVariation
from ..transforms import ChangeRange, Jitter

__all__ = [
    "ChangeNorm",
    "ChangeRange",
    "ChangeStd",
    "ClipRange",
    "DivideByMeanOfAbsolute",
    "FourierSmoothing",
    "GaussianBlur",
    "Jitter",
    "LpNorm",
    "MultiplyBy",
    "TotalVariation",
    "WhiteNoiseBackground",
]

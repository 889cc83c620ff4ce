"""qpelican's Keras (tf-keras) layers."""
from qpelican.nn.layers.dense import EdgeDense
from qpelican.nn.layers.dropout import PairDropout
from qpelican.nn.layers.l1 import CandidateMask, L1CandidateInput, L1Invariants
from qpelican.nn.layers.lineq import LinEq2to0, LinEq2to2
from qpelican.nn.layers.lorentz import LorentzInvariants, MomentumInput, ParticleMask
from qpelican.nn.layers.norm import MaskedBatchNorm

LAYERS = (MomentumInput, ParticleMask, LorentzInvariants, LinEq2to2, LinEq2to0, MaskedBatchNorm, EdgeDense,
          PairDropout, L1CandidateInput, CandidateMask, L1Invariants)

__all__ = [cls.__name__ for cls in LAYERS] + ["LAYERS"]

"""The Level-1 trigger's candidate format (``data.format: l1``): (pT, eta_rel, phi_rel) on the L1 grid.

What a CMS Phase-2 Level-1 trigger delivers per particle-flow/PUPPI candidate (docs/l1.md):

* pT: 14 bits unsigned in 0.25 GeV steps (``ap_ufixed<14,12>``: 0 .. 4095.75 GeV);
* eta and phi: integers in steps of pi/720 (0.25 degree); within a jet 10 bits signed relative
  to the jet axis (-512 .. 511, +-2.23 rad).

:func:`to_l1` converts constituents (E, px, py, pz) in GeV into that grid, jet by jet:

1. the jet axis is the eta and phi of the sum of *all* the jet's constituents (every one stored
   in the file, not only the N kept), rounded to integer steps, as a Level-1 jet's coordinates are;
2. each constituent's eta and phi are rounded to integer steps (half to even), and the relative
   coordinates are the integer differences ``eta_rel = eta_int - eta_jet_int``,
   ``phi_rel = phi_int - phi_jet_int`` wrapped into [-720, 720) (once around is 1440 steps);
3. pT is rounded to 0.25 GeV (half to even, as ``AP_RND_CONV``);
4. the N highest-pT constituents are kept, sorted by pT (descending), zero-padded.

Out of range values saturate as the firmware's ``AP_SAT`` casts do, and every one is counted
(:class:`GridCounts`): pT above 4095.75 GeV becomes 4095.75; eta_rel or phi_rel outside
[-512, 511] become -512 or 511. A constituent whose pT rounds to 0 (below 0.125 GeV) would read
as padding in the firmware (its mask is ``pT != 0``): it is dropped and counted as well. Nothing
wraps silently.

Arrays: ``x`` float32 (jets, N, 3) with (pT in GeV, eta_rel, phi_rel in steps), zero rows for
padding. float32 holds every value exactly. :func:`l1_to_p4` maps them back to massless
4-momenta (for the jet-mass baselines of the same N candidates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from qpelican.core.errors import DataError
from qpelican.core.inputs import L1_PT_LSB
from qpelican.data.readers import DEFAULT_CHUNK, open_dataset

FORMATS = ("p4", "l1")
PT_BITS = 14
PT_INTEGER = 12
PT_LSB = L1_PT_LSB                                # 0.25 GeV = 2^-(PT_BITS - PT_INTEGER)
PT_MAX = 2.0 ** PT_INTEGER - PT_LSB               # 4095.75 GeV
ANGLE_STEP = math.pi / 720.0                      # eta and phi step (rad)
ANGLE_BITS = 10                                   # relative eta, phi within a jet: signed
ANGLE_MIN = -(2 ** (ANGLE_BITS - 1))              # -512
ANGLE_MAX = 2 ** (ANGLE_BITS - 1) - 1             # 511
PHI_TURN = 1440                                   # steps once around in phi


@dataclass
class GridCounts:
    """Candidates that did not fit the L1 grid, counted among the N kept per jet.

    ``candidates``: real candidates kept; ``pt_saturated``: pT above 4095.75 GeV (set to it);
    ``eta_saturated`` / ``phi_saturated``: relative coordinate outside [-512, 511] (clipped);
    ``below_lsb``: pT rounds to 0 (dropped: the firmware would read it as padding);
    ``jets``: jets converted; ``jets_affected``: jets with at least one of the above.
    """

    jets: int = 0
    candidates: int = 0
    pt_saturated: int = 0
    eta_saturated: int = 0
    phi_saturated: int = 0
    below_lsb: int = 0
    jets_affected: int = 0

    def add(self, other):
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def out_of_range(self):
        """Saturated or dropped candidates, all kinds together."""
        return self.pt_saturated + self.eta_saturated + self.phi_saturated + self.below_lsb

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self):
        """One line for the terminal."""
        if not self.out_of_range:
            return (f"L1 grid: {self.candidates} candidates of {self.jets} jets, none out of range "
                    f"(pT <= {PT_MAX} GeV in {PT_BITS} bits, |eta_rel|, |phi_rel| within {ANGLE_BITS} bits)")
        return (f"L1 grid: {self.out_of_range} of {self.candidates} candidates out of range in "
                f"{self.jets_affected} of {self.jets} jets, saturated as the firmware does: "
                f"{self.pt_saturated} pT > {PT_MAX} GeV, {self.eta_saturated} |eta_rel| and "
                f"{self.phi_saturated} |phi_rel| beyond {ANGLE_BITS} bits [{ANGLE_MIN}, {ANGLE_MAX}] steps of pi/720; "
                f"{self.below_lsb} dropped with pT below {PT_LSB / 2} GeV (round to 0)")


def check_format(fmt):
    """``fmt`` if it is a known input format, else a DataError naming the allowed ones."""
    if fmt not in FORMATS:
        raise DataError(f"input format {fmt!r} is not known; allowed: {', '.join(FORMATS)} "
                        "(data.format in a recipe).")
    return fmt


def _grid(x):
    """Round half to even onto integers (numpy's rounding)."""
    return np.round(x)


def to_l1(p4, n):
    """Constituents (jets, M, 4) (E, px, py, pz) in GeV -> (x (jets, n, 3) float32, GridCounts).

    M may exceed n: the jet axis uses every constituent given, the output keeps the n
    highest-pT ones. Padding rows (E == 0) are ignored.
    """
    p4 = np.asarray(p4, np.float64)
    if p4.ndim != 3 or p4.shape[-1] != 4:
        raise DataError(f"momenta have shape {p4.shape}; expected (jets, constituents, 4) with (E, px, py, pz).")
    jets, m = p4.shape[:2]
    e, px, py, pz = (p4[..., k] for k in range(4))
    real = e > 0
    pt = np.hypot(px, py)
    # the jet axis: eta, phi of the constituents' sum, on the grid
    jx, jy, jz = (np.where(real, c, 0.0).sum(axis=1) for c in (px, py, pz))
    jpt = np.hypot(jx, jy)
    with np.errstate(divide="ignore", invalid="ignore"):
        jeta = np.where(jpt > 0, np.arcsinh(np.divide(jz, jpt, out=np.zeros_like(jz), where=jpt > 0)), 0.0)
        eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
    jeta_i, jphi_i = _grid(jeta / ANGLE_STEP), _grid(np.arctan2(jy, jx) / ANGLE_STEP)
    eta_rel = _grid(eta / ANGLE_STEP) - jeta_i[:, None]
    phi_rel = _grid(np.arctan2(py, px) / ANGLE_STEP) - jphi_i[:, None]
    phi_rel = np.mod(phi_rel + PHI_TURN // 2, PHI_TURN) - PHI_TURN // 2      # [-720, 720)
    pt_q = _grid(pt / PT_LSB) * PT_LSB
    below = real & (pt_q == 0)
    keep = real & ~below
    # the n highest-pT constituents (exact pT; stable, so ties keep the file's order)
    order = np.argsort(np.where(keep, -pt, np.inf), axis=1, kind="stable")[:, :n]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    kept = take(keep)
    pt_k, eta_k, phi_k = take(pt_q), take(eta_rel), take(phi_rel)
    pt_sat = kept & (pt_k > PT_MAX)
    eta_sat = kept & ((eta_k < ANGLE_MIN) | (eta_k > ANGLE_MAX))
    phi_sat = kept & ((phi_k < ANGLE_MIN) | (phi_k > ANGLE_MAX))
    x = np.zeros((jets, n, 3), np.float32)
    width = order.shape[1]
    x[:, :width, 0] = np.where(kept, np.minimum(pt_k, PT_MAX), 0.0)
    x[:, :width, 1] = np.where(kept, np.clip(eta_k, ANGLE_MIN, ANGLE_MAX), 0.0)
    x[:, :width, 2] = np.where(kept, np.clip(phi_k, ANGLE_MIN, ANGLE_MAX), 0.0)
    # a constituent dropped below the LSB counts if it would have been among the n kept
    rank_below = below & (np.argsort(np.argsort(-np.where(real, pt, -1.0), axis=1, kind="stable"), axis=1) < n)
    affected = pt_sat.any(1) | eta_sat.any(1) | phi_sat.any(1) | rank_below.any(1)
    counts = GridCounts(jets=int(jets), candidates=int(kept.sum()), pt_saturated=int(pt_sat.sum()),
                        eta_saturated=int(eta_sat.sum()), phi_saturated=int(phi_sat.sum()),
                        below_lsb=int(rank_below.sum()), jets_affected=int(affected.sum()))
    return x, counts


def l1_to_p4(x):
    """L1 candidates (jets, N, 3) -> massless 4-momenta (jets, N, 4) float64 at the grid's values
    (eta, phi relative to the jet axis: every invariant mass is unchanged by that choice)."""
    x = np.asarray(x, np.float64)
    pt, eta, phi = x[..., 0], x[..., 1] * ANGLE_STEP, x[..., 2] * ANGLE_STEP
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)


class L1Dataset:
    """A jet file read as L1 candidates: the same API as :class:`qpelican.data.readers.Dataset`
    (``iter_chunks``, ``read``, ``labels``, ``n_jets``, ``layout``, ``skipped_empty``) with
    (jets, N, 3) arrays; ``counts`` accumulates the :class:`GridCounts` of every read."""

    def __init__(self, path, n_constituents=16):
        self.n_constituents = int(n_constituents)
        self._ds = open_dataset(path, n_constituents=self.n_constituents)
        self._ds.n_constituents = max(self._ds.max_constituents, self.n_constituents)  # the axis uses them all
        self.path, self.layout, self.n_jets = self._ds.path, self._ds.layout, self._ds.n_jets
        self.max_constituents = self._ds.max_constituents
        self.counts = GridCounts()

    @property
    def skipped_empty(self):
        return self._ds.skipped_empty

    def __len__(self):
        return self.n_jets

    def __repr__(self):
        return f"L1Dataset({self.path!r}, layout={self.layout}, n_jets={self.n_jets}, n_constituents={self.n_constituents})"

    def iter_chunks(self, chunk_size=DEFAULT_CHUNK, start=0, stop=None):
        """Yield (x float32 (B, N, 3), labels int8 (B,)) chunk by chunk; counts out-of-range candidates."""
        for p4, y in self._ds.iter_chunks(chunk_size, start, stop):
            x, c = to_l1(p4, self.n_constituents)
            self.counts.add(c)
            yield x, y

    def read(self, start=0, stop=None, chunk_size=DEFAULT_CHUNK):
        """Rows [start, stop) as (x (B, N, 3) float32, labels (B,) int8)."""
        xs, ys = [], []
        for x, y in self.iter_chunks(chunk_size, start, stop):
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0, self.n_constituents, 3), np.float32), np.zeros(0, np.int8)
        return np.concatenate(xs), np.concatenate(ys)

    def labels(self, start=0, stop=None):
        return self._ds.labels(start, stop)


def open_input_dataset(path, n_constituents, fmt="p4"):
    """A jet file in an input format: a :class:`~qpelican.data.readers.Dataset` (p4) or an :class:`L1Dataset`."""
    if check_format(fmt) == "l1":
        return L1Dataset(path, n_constituents)
    return open_dataset(path, n_constituents)


def input_mass(x):
    """Jet mass (GeV) of the kept constituents of either format: (jets, N, 4) or (jets, N, 3) -> (jets,)."""
    x = np.asarray(x)
    p4 = l1_to_p4(x) if x.shape[-1] == 3 else np.asarray(x, np.float64)
    s = p4.sum(axis=1)
    return np.sqrt(np.maximum(s[:, 0] ** 2 - s[:, 1] ** 2 - s[:, 2] ** 2 - s[:, 3] ** 2, 0.0))

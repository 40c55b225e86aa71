"""The cardiac cycle of a retrospectively gated cine: ventricular contraction, atrial kick and valve timing.

Time is measured from the R wave (end-diastole). With ``rr`` the R–R interval (60000 / heart rate ms):

- **Ejection** lasts ``systole_ms`` (≈ 270–360 ms, shortening little with heart rate, so it takes a larger share of
  a fast cycle): the contraction ``c`` rises smoothly from 0 (end-diastole) to 1 (end-systole).
- **Isovolumic relaxation** (``ivrt_ms``, ≈ 60–100 ms): ``c`` stays at 1, all valves closed.
- **Rapid filling** (``rapid_filling_ms``): ``c`` falls to ``diastasis_level`` (the ventricle regains most of
  its volume in early diastole).
- **Diastasis**: ``c`` drifts down slowly until the atria contract.
- **Atrial contraction** (``atrial_ms`` before the next R wave, ≈ 100–160 ms): ``c`` returns to 0 (the atrial
  kick fills the ventricle) while the atria shrink (``atrial_kick`` peaks at 1).

At high heart rates diastasis vanishes and the phases are compressed in proportion. The aortic valve is open
during ejection after the isovolumic contraction (``ivct_ms``), the atrioventricular valves from the end of
isovolumic relaxation until the R wave. Textbook proportions (Wiggers diagram); cine acquisitions cover the whole
R–R interval in 20–30 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _ease(t: float) -> float:
    """0 → 1 smoothly (half cosine) over t ∈ [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * t)


def _bump(t: float) -> float:
    """0 → 1 → 0 smoothly over t ∈ [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return math.sin(math.pi * t) ** 2


@dataclass(frozen=True)
class CardiacCycle:
    heart_rate_bpm: float
    systole_ms: float
    ivct_ms: float
    ivrt_ms: float
    rapid_filling_ms: float
    atrial_ms: float
    diastasis_level: float

    @property
    def rr_ms(self) -> float:
        return 60000.0 / self.heart_rate_bpm

    def _phases(self) -> tuple[float, float, float, float]:
        """(end of ejection, end of relaxation, end of rapid filling, start of atrial contraction) in ms, with
        the diastolic phases compressed when the cycle is too short for all of them."""
        rr = self.rr_ms
        systole = min(self.systole_ms, 0.55 * rr)
        rest = rr - systole
        wanted = self.ivrt_ms + self.rapid_filling_ms + self.atrial_ms
        squeeze = min(1.0, 0.95 * rest / wanted)
        es = systole
        relaxed = es + self.ivrt_ms * squeeze
        filled = relaxed + self.rapid_filling_ms * squeeze
        atrial_start = rr - self.atrial_ms * squeeze
        return es, relaxed, filled, atrial_start

    def contraction(self, t_ms: float) -> float:
        """0 at end-diastole, 1 at end-systole."""
        t = t_ms % self.rr_ms
        es, relaxed, filled, atrial_start = self._phases()
        if t <= es:
            return _ease(t / es)
        if t <= relaxed:
            return 1.0
        if t <= filled:
            return 1.0 - (1.0 - self.diastasis_level) * _ease((t - relaxed) / max(filled - relaxed, 1e-9))
        late = 0.8 * self.diastasis_level
        if t <= atrial_start:
            span = max(atrial_start - filled, 1e-9)
            return self.diastasis_level - (self.diastasis_level - late) * (t - filled) / span
        return late * (1.0 - _ease((t - atrial_start) / max(self.rr_ms - atrial_start, 1e-9)))

    def atrial_kick(self, t_ms: float) -> float:
        """Atrial contraction, 0 → 1 → 0 over the last ``atrial_ms`` before the R wave."""
        t = t_ms % self.rr_ms
        atrial_start = self._phases()[3]
        if t < atrial_start:
            return 0.0
        return _bump((t - atrial_start) / max(self.rr_ms - atrial_start, 1e-9))

    def aortic_opening(self, t_ms: float) -> float:
        """Aortic valve opening in [0, 1]: open during ejection, closed otherwise."""
        t = t_ms % self.rr_ms
        es = self._phases()[0]
        ivct = min(self.ivct_ms, 0.3 * es)
        if t <= ivct or t >= es:
            return 0.0
        return float(_bump((t - ivct) / (es - ivct)) ** 0.35)

    def atrioventricular_opening(self, t_ms: float) -> float:
        """Mitral and tricuspid opening in [0, 1]: open from the end of isovolumic relaxation to the R wave,
        widest in rapid filling and again at the atrial kick, half-closed in diastasis."""
        t = t_ms % self.rr_ms
        _, relaxed, filled, atrial_start = self._phases()
        if t <= relaxed:
            return 0.0
        if t <= filled:
            return _ease(2.0 * (t - relaxed) / max(filled - relaxed, 1e-9))
        if t <= atrial_start:
            return 1.0 - 0.45 * _ease((t - filled) / max(atrial_start - filled, 1e-9))
        u = (t - atrial_start) / max(self.rr_ms - atrial_start, 1e-9)
        return 0.55 + 0.45 * _bump(min(u * 1.6, 1.0)) if u < 0.8 else 0.55 * (1.0 - _ease((u - 0.8) / 0.2))

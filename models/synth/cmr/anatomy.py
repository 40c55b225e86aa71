"""The heart, body and acquisition of one synthetic patient, and the heart's shape at any instant of the cycle.

**Image frame.** Positions are millimetres from the centre of the field of view, x to the image right (the
patient's left), y downwards (posterior), as a 4-chamber view is displayed: ventricles anterior (up), atria
posterior (down), apex up and to the right.

**Heart frame.** ``u`` runs from the crux (where the interventricular and interatrial septa meet the
atrioventricular valves) towards the apex along the long axis, at ``axis_deg`` (counter-clockwise from the image
right; 90° points up); ``v`` runs across it towards the left heart (LV, LA; ``v > 0``) and away from the right
heart (RV, RA). The left ventricle is an ellipse clipped flat along the interventricular septum; the right
ventricle a shorter crescent on the other side of the septum whose tricuspid annulus sits a few millimetres
apically of the mitral one; each atrium an ellipse hanging from its atrioventricular plane, the two separated by
a thin interatrial septum. Sizes are adult textbook values: LV end-diastolic diameter ≈ 42–52 mm, LV length
≈ 70–95 mm, wall 8–11 mm, RV wall 3–4.5 mm, atria ≈ 45–60 mm long.

**Motion.** Through the cycle (:mod:`models.synth.cmr.cycle`, contraction ``c`` ∈ [0, 1]) the apex stays put and
the atrioventricular planes descend towards it (mitral annular excursion 10–16 mm, tricuspid 16–25 mm), so the
ventricles shorten while the atria, whose roofs stay put, lengthen; the ventricles narrow (fractional shortening
22–36 % LV, 18–30 % RV) and their walls thicken; the atria shrink at the atrial kick; the valve leaflets swing
open in diastole and close in systole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.synth.cmr.cycle import CardiacCycle
from models.synth.cmr.shapes import FloatArray, Grid, ellipse_sdf, segment_sdf

Point = tuple[float, float]


@dataclass(frozen=True)
class Acquisition:
    """How the cine was acquired: matrix, resolution, timing and image-quality parameters."""

    rows: int
    cols: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    snr: float  # blood signal / noise standard deviation (per channel of the complex signal)
    psf_sigma_px: float  # blur of the acquired (coarser) resolution, in output pixels
    field_strength_t: float
    repetition_time_ms: float
    echo_time_ms: float
    flip_angle_deg: float
    series_description: str
    n_frames: int
    trigger_delay_ms: float  # trigger time of the first frame
    tilt_from_axial_deg: float  # double-oblique orientation of the 4-chamber plane (DICOM geometry)
    tilt_sagittal_deg: float
    coil_anterior_posterior: float  # strength of the surface-coil brightening near the chest walls
    coil_gradient_x: float
    coil_gradient_y: float
    banding_depth: float  # bSSFP off-resonance dark bands (0 = none)
    banding_period_mm: float
    banding_angle_deg: float
    banding_phase: float


@dataclass(frozen=True)
class Tissues:
    """bSSFP signal of each tissue relative to blood ≈ 1 (T2/T1-weighted: blood and fat bright, myocardium dark)."""

    blood: float
    myocardium: float
    fat: float
    lung: float
    liver: float
    muscle: float
    marrow: float
    csf: float
    cord: float
    valve: float
    pericardium: float
    vessel: float
    esophagus: float
    cortex: float


@dataclass(frozen=True)
class Heart:
    """End-diastolic geometry and motion of the heart (millimetres, degrees)."""

    crux_x: float
    crux_y: float
    axis_deg: float
    lv_length: float  # mitral annulus to LV apex (cavity)
    lv_half_width: float
    lv_wall: float
    apex_wall: float
    septum: float
    rv_length: float  # tricuspid annulus to RV apex (cavity)
    rv_half_width: float
    rv_wall: float
    tricuspid_offset: float  # tricuspid annulus apical of the mitral annulus
    la_length: float
    la_half_width: float
    ra_length: float
    ra_half_width: float
    atrial_wall: float
    septum_offset: float  # v of the interatrial septum
    base_descent: float  # mitral annular plane systolic excursion
    tricuspid_descent: float
    lv_shortening: float
    rv_shortening: float
    wall_thickening: float
    epicardial_fat: float
    av_groove_fat: float
    apical_fat: float
    anterior_leaflet: float
    posterior_leaflet: float
    tricuspid_leaflet: float
    papillary: bool
    moderator_band: bool
    coronary_sinus_radius: float  # 0: the coronary sinus is not in the slice
    pulmonary_veins: tuple[tuple[float, float, float, float], ...]  # (v on the roof, angle°, radius, length)
    trabeculae: tuple[tuple[int, float, float, float], ...]  # (0 LV / 1 RV, share of length, of width, radius)

    @property
    def axis(self) -> Point:
        """Unit vector crux → apex in image coordinates (y down)."""
        t = math.radians(self.axis_deg)
        return math.cos(t), -math.sin(t)

    @property
    def across(self) -> Point:
        """Unit vector towards the left heart, perpendicular to the axis."""
        t = math.radians(self.axis_deg)
        return math.sin(t), math.cos(t)


@dataclass(frozen=True)
class Body:
    """The chest around the heart: outline, chest wall, spine, descending aorta, oesophagus, liver dome, ribs."""

    centre_x: float
    centre_y: float
    half_width: float
    half_depth: float
    angle_deg: float
    subcutaneous_fat: float
    muscle: float
    spine_x: float
    spine_y: float
    vertebra_half_width: float
    vertebra_half_depth: float
    aorta_x: float
    aorta_y: float
    aorta_radius: float
    esophagus_x: float
    esophagus_y: float
    liver: tuple[float, float, float, float, float] | None  # cx, cy, a, b, angle°
    ribs: tuple[tuple[float, float], ...]  # (angle° on the chest-wall ring, length mm)
    breasts: float  # breast size in mm (0 = none)
    mediastinal_fat: float
    texture_seed: int


@dataclass(frozen=True)
class HeartState:
    """The heart at one instant: positions (image mm), frame vectors and sizes, valve openings."""

    crux: Point  # moves with the mitral annulus
    axis: Point
    across: Point
    contraction: float
    atrial_kick: float
    av_opening: float
    aortic_opening: float
    lv_length: float
    lv_half_width: float
    lv_wall: float
    apex_wall: float
    septum: float
    rv_length: float
    rv_half_width: float
    rv_wall: float
    tricuspid_u: float  # u of the tricuspid annulus
    la_length: float
    la_half_width: float
    ra_length: float
    ra_half_width: float
    ias_v: float  # v of the interatrial septum

    def to_image(self, u: float, v: float) -> Point:
        return (
            self.crux[0] + u * self.axis[0] + v * self.across[0],
            self.crux[1] + u * self.axis[1] + v * self.across[1],
        )

    def uv(self, grid: Grid) -> tuple[FloatArray, FloatArray]:
        """Heart-frame coordinates of every pixel of ``grid``."""
        dx, dy = grid.x - self.crux[0], grid.y - self.crux[1]
        u: FloatArray = dx * self.axis[0] + dy * self.axis[1]
        v: FloatArray = dx * self.across[0] + dy * self.across[1]
        return u, v

    # --- the chambers, as signed distances in the heart frame -------------------------------------------------

    @property
    def lv_centre(self) -> Point:
        return 0.45 * self.lv_length, self.septum / 2 + 0.75 * self.lv_half_width

    @property
    def lv_long_semi(self) -> float:
        return 0.58 * self.lv_length

    def lv_cavity(self, u: FloatArray, v: FloatArray) -> FloatArray:
        cu, cv = self.lv_centre
        d = ellipse_sdf(u, v, cu, cv, self.lv_long_semi, self.lv_half_width)
        return np.maximum(np.maximum(d, -1.0 - u), self.septum / 2 - v)

    def lv_epicardium(self, u: FloatArray, v: FloatArray) -> FloatArray:
        cu, cv = self.lv_centre
        d = ellipse_sdf(u, v, cu, cv, self.lv_long_semi + self.apex_wall, self.lv_half_width + self.lv_wall)
        return np.maximum(np.maximum(d, -2.0 - u), -self.septum / 2 - v)

    def lv_half_width_at(self, u: float) -> float:
        cu, _ = self.lv_centre
        r = (u - cu) / self.lv_long_semi
        return self.lv_half_width * math.sqrt(max(0.0, 1.0 - r * r))

    @property
    def rv_centre(self) -> Point:
        return self.tricuspid_u + 0.42 * self.rv_length, -(self.septum / 2 + 0.75 * self.rv_half_width)

    def rv_cavity(self, u: FloatArray, v: FloatArray, lv_epi: FloatArray) -> FloatArray:
        cu, cv = self.rv_centre
        d = ellipse_sdf(u, v, cu, cv, 0.56 * self.rv_length, self.rv_half_width)
        d = np.maximum(np.maximum(d, self.tricuspid_u - 1.0 - u), v + self.septum / 2)
        return np.maximum(d, -lv_epi)

    def rv_epicardium(self, u: FloatArray, v: FloatArray) -> FloatArray:
        cu, cv = self.rv_centre
        d = ellipse_sdf(u, v, cu, cv, 0.56 * self.rv_length + self.rv_wall, self.rv_half_width + self.rv_wall)
        return np.maximum(np.maximum(d, self.tricuspid_u - 2.0 - u), v + self.septum / 2 - 1.0)

    def rv_edges_at(self, u: float) -> tuple[float, float]:
        """(septal, free-wall) v of the RV cavity at ``u``."""
        cu, cv = self.rv_centre
        r = (u - cu) / (0.56 * self.rv_length)
        half = self.rv_half_width * math.sqrt(max(0.0, 1.0 - r * r))
        return min(-self.septum / 2, cv + half), cv - half

    @property
    def la_centre(self) -> Point:
        return -self.la_length / 2 + 5.0, max(self.lv_centre[1], self.ias_v + 0.8 * self.la_half_width)

    def la_cavity(self, u: FloatArray, v: FloatArray, grow: float = 0.0) -> FloatArray:
        """The LA cavity; with ``grow`` > 0 its outline grown by that much (the atrial wall), across the septum."""
        cu, cv = self.la_centre
        d = ellipse_sdf(u, v, cu, cv, self.la_length / 2 + 5.0 + grow, self.la_half_width + grow)
        if grow:
            return np.maximum(d, u - grow)
        return np.maximum(np.maximum(d, u), self.ias_v + 1.5 - v)

    @property
    def ra_centre(self) -> Point:
        return self.tricuspid_u - self.ra_length / 2 + 5.0, self.ias_v - 0.8 * self.ra_half_width

    def ra_cavity(self, u: FloatArray, v: FloatArray, grow: float = 0.0) -> FloatArray:
        cu, cv = self.ra_centre
        d = ellipse_sdf(u, v, cu, cv, self.ra_length / 2 + 5.0 + grow, self.ra_half_width + grow)
        if grow:
            return np.maximum(d, u - self.tricuspid_u - grow)
        return np.maximum(np.maximum(d, u - self.tricuspid_u), v - self.ias_v + 1.5)

    def mitral_hinges(self) -> tuple[Point, Point]:
        """(septal, lateral) hinge points of the mitral valve in the heart frame."""
        _, cv = self.lv_centre
        half = self.lv_half_width_at(0.0)
        return (0.0, max(self.septum / 2, cv - half)), (0.0, cv + half)


def heart_state(heart: Heart, cycle: CardiacCycle, t_ms: float) -> HeartState:
    """The heart at ``t_ms`` after the R wave."""
    c = cycle.contraction(t_ms)
    kick = cycle.atrial_kick(t_ms)
    ax, ay = heart.axis
    descent = heart.base_descent * c
    thick = 1.0 + heart.wall_thickening * c
    extra_tricuspid = (heart.tricuspid_descent - heart.base_descent) * c
    atrial_scale = 1.0 - 0.1 * kick
    return HeartState(
        crux=(heart.crux_x + ax * descent, heart.crux_y + ay * descent),
        axis=heart.axis,
        across=heart.across,
        contraction=c,
        atrial_kick=kick,
        av_opening=cycle.atrioventricular_opening(t_ms),
        aortic_opening=cycle.aortic_opening(t_ms),
        lv_length=heart.lv_length - descent,
        lv_half_width=heart.lv_half_width * (1.0 - heart.lv_shortening * c),
        lv_wall=heart.lv_wall * thick,
        apex_wall=heart.apex_wall * thick,
        septum=heart.septum * (1.0 + 0.8 * heart.wall_thickening * c),
        rv_length=heart.rv_length - heart.tricuspid_descent * c,
        rv_half_width=heart.rv_half_width * (1.0 - heart.rv_shortening * c),
        rv_wall=heart.rv_wall * thick,
        tricuspid_u=heart.tricuspid_offset + extra_tricuspid,
        la_length=(heart.la_length + descent) * atrial_scale,
        la_half_width=heart.la_half_width * (1.0 + 0.06 * c) * atrial_scale,
        ra_length=(heart.ra_length + heart.tricuspid_descent * c) * atrial_scale,
        ra_half_width=heart.ra_half_width * (1.0 + 0.06 * c) * atrial_scale,
        ias_v=heart.septum_offset,
    )


def leaflet_segments(heart: Heart, st: HeartState) -> list[tuple[Point, Point]]:
    """The atrioventricular valve leaflets as heart-frame segments (hinge → free edge): closed across the annulus
    in systole, swung towards the apex when open."""
    segments: list[tuple[Point, Point]] = []
    o = st.av_opening
    (su, sv), (lu, lv) = st.mitral_hinges()
    meet = (-2.5, sv + 0.62 * (lv - sv))
    a_open = (0.9 * heart.anterior_leaflet, sv + 0.3 * heart.anterior_leaflet)
    p_open = (0.85 * heart.posterior_leaflet, lv - 0.45 * heart.posterior_leaflet)
    for hinge, opened in (((su, sv), a_open), ((lu, lv), p_open)):
        tip = (meet[0] + o * (opened[0] - meet[0]), meet[1] + o * (opened[1] - meet[1]))
        segments.append((hinge, tip))
    tu = st.tricuspid_u
    septal_v, free_v = st.rv_edges_at(tu + 1.0)
    meet_t = (tu - 2.0, septal_v + 0.5 * (free_v - septal_v))
    s_open = (tu + 0.85 * heart.tricuspid_leaflet, septal_v - 0.2 * heart.tricuspid_leaflet)
    f_open = (tu + 0.85 * heart.tricuspid_leaflet, free_v + 0.35 * heart.tricuspid_leaflet)
    for hinge, opened in (((tu, septal_v), s_open), ((tu, free_v), f_open)):
        tip = (meet_t[0] + o * (opened[0] - meet_t[0]), meet_t[1] + o * (opened[1] - meet_t[1]))
        segments.append((hinge, tip))
    return segments


def band_sdf(u: FloatArray, v: FloatArray, a: Point, b: Point, half_thickness: float) -> FloatArray:
    """A straight band of the heart frame (leaflet, moderator band) as a signed distance."""
    return segment_sdf(u, v, a, b) - half_thickness


def heart_outline_points(heart: Heart, st: HeartState, n: int = 48) -> list[Point]:
    """Points on the outer boundary of the four chambers (image mm), for bounding boxes and placement."""
    pts: list[Point] = []
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    cu, cv = st.lv_centre
    rcu, rcv = st.rv_centre
    lau, lav = st.la_centre
    rau, rav = st.ra_centre
    ellipses = (
        (cu, cv, st.lv_long_semi + st.apex_wall, st.lv_half_width + st.lv_wall),
        (rcu, rcv, 0.56 * st.rv_length + st.rv_wall, st.rv_half_width + st.rv_wall),
        (lau, lav, st.la_length / 2 + 5.0 + heart.atrial_wall, st.la_half_width + heart.atrial_wall),
        (rau, rav, st.ra_length / 2 + 5.0 + heart.atrial_wall, st.ra_half_width + heart.atrial_wall),
    )
    for eu, ev, a, b in ellipses:
        for t in angles:
            pts.append(st.to_image(eu + a * math.cos(t), ev + b * math.sin(t)))
    return pts

"""Drawing one synthetic patient: acquisition, cardiac cycle, heart, body, tissue signals and outflow tract.

Randomness: patient ``index`` of ``split`` draws everything from its own generator seeded from (seed, split,
index), so a patient is the same whatever the split sizes are. Labels are balanced in pairs: of patients 2k and
2k + 1 exactly one is LVOT-positive (a coin seeded from (seed, split, k) says which), so every split is half
positive to within one patient.

Positive patients show the tract in some frames and not in others (the generator redraws the tract's
through-plane position until they do); negative patients in none, some of them by a narrow margin (a faint
partial-volume hint of the root that stays under the visibility rule). See :mod:`models.synth.cmr.lvot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.synth.cmr.anatomy import Acquisition, Body, Heart, Tissues, heart_outline_points, heart_state
from models.synth.cmr.cycle import CardiacCycle
from models.synth.cmr.lvot import OutflowTract, Visibility, visibility

SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}
FRAMES_MIN, FRAMES_MAX = 20, 30
SERIES_DESCRIPTIONS = ("4CH cine", "CINE_4CH", "4ch SSFP", "cine 4ch bSSFP", "4CH_TF2D", "SSFP 4ch retro", "4Ch Cine")
DIASTOLIC_SHARE = 0.25  # positive patients whose tract shows in diastole rather than systole
MAX_DRAWS = 200
PLANNING_ERROR_MM = 26.0  # how far off the heart the field of view is centred (σ per axis)


class PatientError(ValueError):
    """A patient cannot be drawn with the requested settings."""


@dataclass(frozen=True)
class Patient:
    seed: int
    split: str
    index: int
    patient_id: str
    positive: bool  # the patient has LVOT-positive frames
    acquisition: Acquisition
    cycle: CardiacCycle
    heart: Heart
    body: Body
    tissues: Tissues
    tract: OutflowTract
    visibilities: tuple[Visibility, ...]  # one per frame

    @property
    def n_frames(self) -> int:
        return self.acquisition.n_frames

    def trigger_time_ms(self, frame: int) -> float:
        """Retrospective gating: frames evenly spaced over the R–R interval."""
        return self.acquisition.trigger_delay_ms + frame * self.cycle.rr_ms / self.n_frames

    def noise_seed(self, frame: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, split_code(self.split), self.index, 2, frame])


def split_code(split: str) -> int:
    code = SPLIT_CODES.get(split)
    if code is None:  # any other split name: a stable code from its bytes
        code = 3 + int.from_bytes(split.encode("utf-8")[:8].ljust(8, b"\0"), "little")
    return code


def patient_id(seed: int, split: str, index: int) -> str:
    return f"CMR{seed}-{split}-{index:05d}"


def is_positive(seed: int, split: str, index: int) -> bool:
    """Pairwise balanced labels: one of patients 2k, 2k + 1 is positive."""
    coin = np.random.default_rng(np.random.SeedSequence([seed, split_code(split), index // 2, 1]))
    first_is_positive = bool(coin.random() < 0.5)
    return first_is_positive == (index % 2 == 0)


def _cycle(rng: np.random.Generator) -> CardiacCycle:
    return CardiacCycle(
        heart_rate_bpm=float(rng.uniform(50.0, 100.0)),
        systole_ms=float(rng.uniform(270.0, 360.0)),
        ivct_ms=float(rng.uniform(30.0, 50.0)),
        ivrt_ms=float(rng.uniform(60.0, 100.0)),
        rapid_filling_ms=float(rng.uniform(120.0, 200.0)),
        atrial_ms=float(rng.uniform(100.0, 160.0)),
        diastasis_level=float(rng.uniform(0.15, 0.3)),
    )


def _acquisition(rng: np.random.Generator, frames_min: int, frames_max: int) -> Acquisition:
    cols = int(rng.choice([176, 192, 208, 224, 240, 256]))
    fov = float(rng.uniform(300.0, 400.0))
    rows = max(96, round(cols * float(rng.uniform(0.75, 1.0)) / 8.0) * 8)
    three_tesla = bool(rng.random() < 0.35)
    tr = float(rng.uniform(2.8, 3.6))
    banding = three_tesla and rng.random() < 0.35
    return Acquisition(
        rows=rows,
        cols=cols,
        pixel_spacing_mm=fov / cols,
        slice_thickness_mm=float(rng.uniform(6.0, 8.0)),
        snr=float(math.exp(rng.uniform(math.log(12.0), math.log(45.0)))) * (1.3 if three_tesla else 1.0),
        psf_sigma_px=float(rng.uniform(0.3, 0.85)),
        field_strength_t=3.0 if three_tesla else 1.5,
        repetition_time_ms=tr,
        echo_time_ms=tr / 2,
        flip_angle_deg=float(rng.uniform(45.0, 75.0)),
        series_description=str(rng.choice(SERIES_DESCRIPTIONS)),
        n_frames=int(rng.integers(frames_min, frames_max + 1)),
        trigger_delay_ms=float(rng.uniform(0.0, 15.0)),
        tilt_from_axial_deg=float(rng.uniform(20.0, 40.0)),
        tilt_sagittal_deg=float(rng.uniform(-15.0, 15.0)),
        coil_anterior_posterior=float(rng.uniform(0.15, 0.7)),
        coil_gradient_x=float(rng.uniform(-0.25, 0.25)),
        coil_gradient_y=float(rng.uniform(-0.35, 0.1)),
        banding_depth=float(rng.uniform(0.5, 0.9)) if banding else 0.0,
        banding_period_mm=float(rng.uniform(70.0, 160.0)),
        banding_angle_deg=float(rng.uniform(0.0, 180.0)),
        banding_phase=float(rng.uniform(0.0, 1.0)),
    )


def _tissues(rng: np.random.Generator) -> Tissues:
    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    return Tissues(
        blood=u(0.85, 1.0),
        myocardium=u(0.17, 0.3),
        fat=u(0.72, 1.0),
        lung=u(0.02, 0.07),
        liver=u(0.22, 0.36),
        muscle=u(0.15, 0.26),
        marrow=u(0.4, 0.6),
        csf=u(0.8, 1.0),
        cord=u(0.3, 0.42),
        valve=u(0.2, 0.35),
        pericardium=u(0.05, 0.12),
        vessel=u(0.35, 0.65),
        esophagus=u(0.25, 0.4),
        cortex=u(0.02, 0.08),
    )


def _heart(rng: np.random.Generator) -> Heart:
    """End-diastolic heart with its crux at the origin; the caller places it in the field of view."""

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    k = u(0.88, 1.15)
    lv_length = 82.0 * k + u(-6.0, 6.0)
    veins = tuple(
        (u(-0.7, 0.7), u(-35.0, 35.0), u(4.0, 6.5), u(15.0, 30.0)) for _ in range(int(rng.choice([0, 1, 1, 2])))
    )
    return Heart(
        crux_x=0.0,
        crux_y=0.0,
        axis_deg=u(30.0, 95.0),
        lv_length=lv_length,
        lv_half_width=27.0 * k + u(-2.0, 2.0),
        lv_wall=u(8.0, 10.5),
        apex_wall=u(5.0, 7.0),
        septum=u(8.0, 11.0),
        rv_length=0.85 * lv_length + u(-5.0, 5.0),
        rv_half_width=21.0 * k + u(-2.5, 2.5),
        rv_wall=u(3.0, 4.5),
        tricuspid_offset=u(5.0, 10.0),
        la_length=u(38.0, 52.0) * k,
        la_half_width=u(17.0, 22.0) * k,
        ra_length=u(40.0, 55.0) * k,
        ra_half_width=u(18.0, 24.0) * k,
        atrial_wall=u(2.0, 3.0),
        septum_offset=u(-2.0, 3.0),
        base_descent=u(10.0, 16.0),
        tricuspid_descent=u(16.0, 25.0),
        lv_shortening=u(0.22, 0.36),
        rv_shortening=u(0.18, 0.3),
        wall_thickening=u(0.35, 0.6),
        epicardial_fat=u(1.5, 5.0),
        av_groove_fat=u(4.0, 9.0),
        apical_fat=u(3.0, 12.0),
        anterior_leaflet=u(20.0, 26.0),
        posterior_leaflet=u(11.0, 15.0),
        tricuspid_leaflet=u(15.0, 22.0),
        papillary=bool(rng.random() < 0.8),
        moderator_band=bool(rng.random() < 0.7),
        coronary_sinus_radius=u(3.5, 5.5) if rng.random() < 0.35 else 0.0,
        pulmonary_veins=veins,
        trabeculae=tuple(
            (side, u(0.5, 0.95), u(0.6, 1.0), u(1.2, 2.6)) for side in (0, 1) for _ in range(int(rng.integers(2, 7)))
        ),
    )


def _place_heart(rng: np.random.Generator, heart: Heart, cycle: CardiacCycle) -> Heart:
    """The planner centres the field of view on the heart, give or take a few cm (σ 26 mm, at most 60 mm per axis)."""
    pts = np.array(heart_outline_points(heart, heart_state(heart, cycle, 0.0)))
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    error = np.clip(rng.normal(0.0, PLANNING_ERROR_MM, size=2), -60.0, 60.0)
    return Heart(**{**heart.__dict__, "crux_x": float(error[0] - centre[0]), "crux_y": float(error[1] - centre[1])})


def _body(rng: np.random.Generator, heart: Heart, cycle: CardiacCycle) -> Body:
    """The chest built around the placed heart: the descending aorta behind the atria, the spine behind and to
    the right of it, the chest wall in front of the ventricles."""

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    pts = np.array(heart_outline_points(heart, heart_state(heart, cycle, 0.0)))
    x_min, y_min = pts.min(axis=0)
    x_max, y_max = pts.max(axis=0)
    posterior = pts[int(np.argmax(pts[:, 1]))]
    aorta_r = u(10.0, 14.0)
    aorta_x = float(posterior[0]) + u(-5.0, 20.0)
    aorta_y = float(y_max) + aorta_r + u(4.0, 12.0)
    vert_hw, vert_hd = u(18.0, 23.0), u(14.0, 18.0)
    spine_x = aorta_x - aorta_r - vert_hw * u(0.6, 1.0)
    spine_y = aorta_y + aorta_r * u(0.6, 1.2) + vert_hd * 0.6
    subcut = u(6.0, 30.0)
    muscle = u(8.0, 16.0)
    back = spine_y + vert_hd + u(45.0, 65.0) + subcut * 0.5
    front = float(y_min) - u(3.0, 20.0) - subcut - muscle
    half_depth = (back - front) / 2
    centre_x = (x_min + x_max) / 2 + u(-30.0, 0.0)
    half_width = max(u(145.0, 190.0), float(x_max - x_min) / 2 + 60.0)
    liver = None
    if rng.random() < 0.45:  # the dome of the liver under the right hemidiaphragm (image lower left)
        liver = (
            float(centre_x) - half_width * u(0.45, 0.7),
            front + half_depth * u(1.1, 1.5),
            half_width * u(0.35, 0.55),
            half_depth * u(0.35, 0.6),
            u(-30.0, 10.0),
        )
    n_ribs = int(rng.integers(5, 11))
    ribs = tuple((u(-160.0, -20.0) if rng.random() < 0.5 else u(20.0, 160.0), u(9.0, 16.0)) for _ in range(n_ribs))
    return Body(
        centre_x=float(centre_x),
        centre_y=float(front + half_depth),
        half_width=float(half_width),
        half_depth=float(half_depth),
        angle_deg=u(-6.0, 6.0),
        subcutaneous_fat=subcut,
        muscle=muscle,
        spine_x=float(spine_x),
        spine_y=float(spine_y),
        vertebra_half_width=vert_hw,
        vertebra_half_depth=vert_hd,
        aorta_x=aorta_x,
        aorta_y=aorta_y,
        aorta_radius=aorta_r,
        esophagus_x=aorta_x - aorta_r - u(6.0, 12.0),
        esophagus_y=aorta_y - u(0.0, 10.0),
        liver=liver,
        ribs=ribs,
        breasts=u(15.0, 40.0) if rng.random() < 0.4 else 0.0,
        mediastinal_fat=u(2.0, 10.0),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _tract_shape(rng: np.random.Generator, heart: Heart) -> OutflowTract:
    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    tract_r = u(8.5, 11.0)
    annulus_r = tract_r * u(1.05, 1.15)
    sinus_r = annulus_r * u(1.25, 1.42)
    return OutflowTract(
        start=(u(11.0, 17.0), heart.septum / 2 + u(5.0, 9.0)),
        control=(u(-1.0, 3.0), heart.septum / 2 + u(-0.5, 2.5)),
        root=(-(sinus_r + u(0.0, 4.0)), heart.septum_offset + u(-1.0, 5.0)),
        tract_radius=tract_r,
        annulus_radius=annulus_r,
        sinus_radius=sinus_r,
        wall=u(1.5, 2.2),
        valve_at=u(0.55, 0.62),
        offset=0.0,
        through_plane=0.0,
        tilt=-u(2.5, 7.0),  # the LV end lies nearer the slice than the root
    )


def _through_plane(rng: np.random.Generator, tract: OutflowTract, positive: bool) -> OutflowTract:
    """Where the tract lies relative to the slice: crossing it in part of the cycle (positive patients) or
    staying outside it, sometimes by a hair (negative patients)."""
    swing = float(rng.uniform(6.0, 14.0))
    # depth at which the root's cut through the slice reaches the visible area
    edge = math.sqrt(max(tract.sinus_radius**2 - 1.3 * 60.0 / math.pi, 1.0))
    if positive:
        threshold = float(rng.uniform(0.2, 0.8))  # contraction at which the tract appears or disappears
        if rng.random() < DIASTOLIC_SHARE:  # visible while c < threshold
            offset, through = edge - swing * threshold, swing
        else:  # visible while c > threshold (systole)
            offset, through = edge + swing * threshold, -swing
    else:
        margin = float(rng.uniform(0.3, 3.0)) if rng.random() < 0.35 else float(rng.uniform(3.0, 14.0))
        clear = tract.max_radius + abs(tract.tilt) + margin
        if rng.random() < 0.5:
            offset, through = clear + swing, -swing
        else:
            offset, through = clear, swing
    return OutflowTract(**{**tract.__dict__, "offset": offset, "through_plane": through})


def frame_visibilities(
    tract: OutflowTract, heart: Heart, cycle: CardiacCycle, acq: Acquisition, trigger_times: list[float]
) -> tuple[Visibility, ...]:
    return tuple(
        visibility(
            tract,
            heart_state(heart, cycle, t),
            heart.base_descent,
            acq.slice_thickness_mm,
            acq.rows,
            acq.cols,
            acq.pixel_spacing_mm,
        )
        for t in trigger_times
    )


def sample_patient(
    seed: int, split: str, index: int, frames_min: int = FRAMES_MIN, frames_max: int = FRAMES_MAX
) -> Patient:
    """Draw patient ``index`` of ``split`` for ``seed`` (see the module docstring)."""
    if not 2 <= frames_min <= frames_max:
        raise PatientError(f"need 2 <= frames_min <= frames_max, got {frames_min} and {frames_max}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_code(split), index, 0]))
    positive = is_positive(seed, split, index)
    acq = _acquisition(rng, frames_min, frames_max)
    cycle = _cycle(rng)
    heart = _place_heart(rng, _heart(rng), cycle)
    body = _body(rng, heart, cycle)
    tissues = _tissues(rng)
    shape = _tract_shape(rng, heart)
    times = [acq.trigger_delay_ms + k * cycle.rr_ms / acq.n_frames for k in range(acq.n_frames)]
    for _ in range(MAX_DRAWS):
        tract = _through_plane(rng, shape, positive)
        seen = frame_visibilities(tract, heart, cycle, acq, times)
        n_shown = sum(v.positive for v in seen)
        if (positive and 0 < n_shown < len(seen)) or (not positive and n_shown == 0):
            return Patient(
                seed,
                split,
                index,
                patient_id(seed, split, index),
                positive,
                acq,
                cycle,
                heart,
                body,
                tissues,
                tract,
                seen,
            )
    raise PatientError(f"patient {index} of {split} (seed {seed}): no tract position fits its label")

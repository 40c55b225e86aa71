"""Render the frames of one synthetic 4-chamber cine: tissue map → bSSFP signal → coil bias → blur → Rician noise.

Image formation, simplified. Each tissue has a balanced-SSFP signal (blood and fat bright, myocardium, muscle and
liver dark-grey, lung nearly black; :class:`~models.synth.cmr.anatomy.Tissues`). The tissue map is drawn on a grid
twice as fine as the matrix and averaged down (in-plane partial volume); the outflow tract carries its own
through-plane partial volume (:mod:`models.synth.cmr.lvot`). The map is multiplied by a smooth receive-coil
sensitivity (brighter near the anterior and posterior chest walls, with a gentle gradient), optionally by the dark
off-resonance bands of bSSFP at 3 T, blurred by the point-spread function of the coarser acquired resolution, and
turned into a magnitude image of a complex signal with Gaussian noise in both channels — Rician noise, with the
noise floor visible in the air and lungs. Values are scaled per patient (one window for the whole cine, as a
scanner stores a series) and stored as 12-bit integers.

The body, lungs, spine, aorta and chest wall do not move (a breath-hold cine); they are drawn once per patient.
The heart is redrawn in every frame over a window around it. Noise comes from its own random stream per frame,
so rendering a frame with and without the outflow tract changes exactly the tract's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.synth.cmr.anatomy import HeartState, Point, band_sdf, heart_outline_points, heart_state, leaflet_segments
from models.synth.cmr.lvot import tract_fraction
from models.synth.cmr.patient import Patient
from models.synth.cmr.shapes import (
    FINE,
    FloatArray,
    Grid,
    coverage,
    downsample,
    ellipse_sdf,
    full_grid,
    paint,
    segment_sdf,
    window,
)

BITS_STORED = 12
MAX_VALUE = (1 << BITS_STORED) - 1
DISPLAY_HEADROOM = (1.15, 1.5)  # the stored window puts blood at 1/1.5 … 1/1.15 of full scale


@dataclass(frozen=True)
class Frame:
    """One rendered frame: 12-bit pixel values and its label."""

    pixels: npt.NDArray[np.uint16]  # [rows, cols], 0 … 4095
    frame_index: int
    trigger_time_ms: float
    label: int
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 in pixels (inclusive) when LVOT-positive
    visible_area_mm2: float

    @property
    def unit(self) -> npt.NDArray[np.float32]:
        """The frame as float32 in [0, 1]."""
        out: npt.NDArray[np.float32] = self.pixels.astype(np.float32) / np.float32(MAX_VALUE)
        return out


def _circle(grid: Grid, cx: float, cy: float, r: float) -> FloatArray:
    dist: FloatArray = np.hypot(grid.x - cx, grid.y - cy) - r
    return dist


class CineRenderer:
    """Renders the frames of ``patient``; the static chest is drawn once, on construction."""

    def __init__(self, patient: Patient) -> None:
        self.patient = patient
        acq = patient.acquisition
        self.rows, self.cols, self.spacing = acq.rows, acq.cols, acq.pixel_spacing_mm
        texture = np.random.default_rng(patient.body.texture_seed)
        self.background_fine = self._draw_chest(texture)
        self.background = downsample(self.background_fine)
        self.heart_window = self._heart_window()
        self.gain = self._coil_gain()
        self.band = self._banding()
        self.scale = patient.tissues.blood * float(
            np.random.default_rng(patient.body.texture_seed + 1).uniform(*DISPLAY_HEADROOM)
        )

    # ---------------------------------------------------------------------------------------- the static chest

    def _draw_chest(self, texture: np.random.Generator) -> FloatArray:
        p = self.patient
        b, t = p.body, p.tissues
        grid = full_grid(self.rows, self.cols, self.spacing)
        step = grid.step_mm
        canvas = np.zeros(grid.shape, dtype=np.float64)
        angle = math.radians(b.angle_deg)

        def body_ellipse(shrink: float) -> FloatArray:
            return ellipse_sdf(
                grid.x, grid.y, b.centre_x, b.centre_y, b.half_width - shrink, b.half_depth - shrink, angle
            )

        if b.breasts > 0:  # two flat anterior mounds of fat either side of the sternum
            front = b.centre_y - b.half_depth
            for side in (-1.0, 1.0):
                bx = b.centre_x + side * 0.42 * b.half_width
                breast = ellipse_sdf(grid.x, grid.y, bx, front + 0.35 * b.breasts, 2.4 * b.breasts, 0.85 * b.breasts)
                paint(canvas, coverage(breast, step), t.fat)
        # Chest wall: subcutaneous fat and muscle whose thickness varies around the body.
        outline = body_ellipse(0.0)
        theta = np.arctan2(grid.y - b.centre_y, grid.x - b.centre_x)
        lumpy = np.zeros_like(theta)
        for k in (1, 2, 3):
            lumpy += texture.uniform(0.0, 0.35 / k) * np.cos(k * theta + texture.uniform(0, 2 * math.pi))
        fat_inner = outline + b.subcutaneous_fat * (1.0 + lumpy)
        muscle_inner = fat_inner + b.muscle * (1.0 + 0.6 * lumpy[::-1, ::-1])
        paint(canvas, coverage(outline, step), t.fat)
        paint(canvas, coverage(fat_inner, step), t.muscle)
        cavity_sdf = muscle_inner
        cavity = coverage(cavity_sdf, step)
        # Lungs: nearly no signal, a faint low-frequency texture and vessels in cross-section.
        lung_texture = cv2.resize(
            texture.normal(0.0, 1.0, size=(8, 8)).astype(np.float32), grid.shape[::-1], interpolation=cv2.INTER_CUBIC
        ).astype(np.float64)
        paint(canvas, cavity, t.lung * (1.0 + 0.35 * lung_texture))
        self._ribs_and_sternum(canvas, grid, texture)
        n_vessels = int(texture.integers(60, 140))
        ring_a, ring_b = b.half_width - b.subcutaneous_fat - b.muscle, b.half_depth - b.subcutaneous_fat - b.muscle
        for _ in range(n_vessels):
            rad, ang = math.sqrt(texture.uniform(0.05, 1.0)), texture.uniform(0, 2 * math.pi)
            vx = b.centre_x + 0.95 * rad * ring_a * math.cos(ang)
            vy = b.centre_y + 0.95 * rad * ring_b * math.sin(ang)
            r = float(texture.uniform(0.8, 3.2))
            vessel = _circle(grid, vx, vy, r)
            paint(canvas, coverage(vessel, step) * cavity, t.vessel * texture.uniform(0.5, 1.0))
        if b.liver is not None:
            lx, ly, la, lb, lang = b.liver
            liver = np.maximum(ellipse_sdf(grid.x, grid.y, lx, ly, la, lb, math.radians(lang)), cavity_sdf)
            diaphragm = np.maximum(ellipse_sdf(grid.x, grid.y, lx, ly, la + 3, lb + 3, math.radians(lang)), cavity_sdf)
            paint(canvas, coverage(diaphragm, step), t.muscle)
            paint(canvas, coverage(liver, step), t.liver)
            for _ in range(int(texture.integers(3, 9))):
                ang = texture.uniform(0, 2 * math.pi)
                rr = texture.uniform(0.1, 0.75)
                vx, vy = lx + rr * la * math.cos(ang), ly + rr * lb * math.sin(ang)
                vessel = np.maximum(_circle(grid, vx, vy, float(texture.uniform(1.5, 4.5))), liver)
                paint(canvas, coverage(vessel, step), t.blood * 0.8)
        # Anterior mediastinum: fat between the heart and the sternum.
        st = heart_state(p.heart, p.cycle, 0.0)
        outline = np.array(heart_outline_points(p.heart, st))
        top = outline[int(np.argmin(outline[:, 1]))]
        wall_y = b.centre_y - b.half_depth + b.subcutaneous_fat + b.muscle
        gap = max(float(top[1]) - wall_y, 0.0)
        anterior = ellipse_sdf(
            grid.x, grid.y, float(top[0]) - 10.0, (float(top[1]) + wall_y) / 2 + 8.0, 55.0, gap / 2 + 14.0
        )
        paint(canvas, coverage(np.maximum(anterior, cavity_sdf), step), t.fat)
        # Posterior mediastinum: a little fat around the aorta and oesophagus, the spine behind.
        post = np.minimum(
            _circle(grid, b.aorta_x, b.aorta_y, b.aorta_radius + 5.0),
            segment_sdf(grid.x, grid.y, (b.aorta_x, b.aorta_y), (b.esophagus_x, b.esophagus_y)) - 8.0,
        )
        paint(canvas, coverage(np.maximum(post, cavity_sdf), step), t.fat * 0.9)
        self._spine(canvas, grid)
        paint(canvas, coverage(_circle(grid, b.aorta_x, b.aorta_y, b.aorta_radius + 1.5), step), t.myocardium)
        paint(canvas, coverage(_circle(grid, b.aorta_x, b.aorta_y, b.aorta_radius), step), t.blood * 0.92)
        esophagus = ellipse_sdf(grid.x, grid.y, b.esophagus_x, b.esophagus_y, 7.0, 5.0, 0.3)
        paint(canvas, coverage(esophagus, step), t.esophagus)
        if texture.random() < 0.3:
            paint(canvas, coverage(_circle(grid, b.esophagus_x, b.esophagus_y, 1.8), step), 0.0)
        # The pericardial sac as the heart fills it at end-diastole (the heart is drawn over it in every frame).
        u, v = st.uv(grid)
        outer = self._outer_sdf(st, u, v)
        paint(canvas, coverage(outer - p.heart.epicardial_fat, step), t.fat)
        return canvas

    def _ribs_and_sternum(self, canvas: FloatArray, grid: Grid, texture: np.random.Generator) -> None:
        b, t = self.patient.body, self.patient.tissues
        step = grid.step_mm
        inset = b.subcutaneous_fat + 0.55 * b.muscle
        angle = math.radians(b.angle_deg)
        ca, sa = math.cos(angle), math.sin(angle)
        bones = [(phi, length, 4.0) for phi, length in b.ribs] + [(-90.0 + texture.uniform(-6, 6), 26.0, 6.0)]
        for phi_deg, length, half_thick in bones:
            phi = math.radians(phi_deg)
            ex, ey = (b.half_width - inset) * math.cos(phi), (b.half_depth - inset) * math.sin(phi)
            px, py = b.centre_x + ex * ca - ey * sa, b.centre_y + ex * sa + ey * ca
            tangent = math.atan2((b.half_depth - inset) * math.cos(phi), -(b.half_width - inset) * math.sin(phi))
            bone = ellipse_sdf(grid.x, grid.y, px, py, length / 2, half_thick, tangent + angle)
            paint(canvas, coverage(bone, step), t.cortex)
            paint(canvas, coverage(bone + 1.3, step), t.marrow * 0.8)

    def _spine(self, canvas: FloatArray, grid: Grid) -> None:
        b, t = self.patient.body, self.patient.tissues
        step = grid.step_mm
        sx, sy = b.spine_x, b.spine_y
        canal_y = sy + b.vertebra_half_depth + 11.0
        for side in (-1.0, 1.0):
            para = ellipse_sdf(grid.x, grid.y, sx + side * 24.0, canal_y + 14.0, 20.0, 15.0, side * 0.3)
            paint(canvas, coverage(para, step), t.muscle)
        vertebra = ellipse_sdf(grid.x, grid.y, sx, sy, b.vertebra_half_width, b.vertebra_half_depth)
        paint(canvas, coverage(vertebra, step), t.cortex)
        paint(canvas, coverage(vertebra + 1.5, step), t.marrow)
        for side in (-1.0, 1.0):
            lamina = segment_sdf(grid.x, grid.y, (sx + side * 9.0, canal_y - 4.0), (sx + side * 5.0, canal_y + 12.0))
            paint(canvas, coverage(lamina - 2.5, step), t.marrow * 0.7)
        paint(canvas, coverage(_circle(grid, sx, canal_y, 8.0), step), t.csf)
        paint(canvas, coverage(_circle(grid, sx, canal_y, 4.5), step), t.cord)

    # ---------------------------------------------------------------------------------------------- the heart

    def _outer_sdf(self, st: HeartState, u: FloatArray, v: FloatArray) -> FloatArray:
        wall = self.patient.heart.atrial_wall
        outer: FloatArray = np.minimum(
            np.minimum(st.lv_epicardium(u, v), st.rv_epicardium(u, v)),
            np.minimum(st.la_cavity(u, v, grow=wall), st.ra_cavity(u, v, grow=wall)),
        )
        return outer

    def _heart_window(self) -> Grid:
        p = self.patient
        pts: list[Point] = []
        for k in range(p.n_frames):
            pts += heart_outline_points(p.heart, heart_state(p.heart, p.cycle, p.trigger_time_ms(k)), n=24)
        arr = np.array(pts)
        margin = 45.0  # epicardial and groove fat, pulmonary veins
        return window(
            self.rows,
            self.cols,
            self.spacing,
            float(arr[:, 0].min()) - margin,
            float(arr[:, 0].max()) + margin,
            float(arr[:, 1].min()) - margin,
            float(arr[:, 1].max()) + margin,
        )

    def _draw_heart(self, canvas: FloatArray, grid: Grid, st: HeartState, with_tract: bool) -> None:
        p = self.patient
        h, t = p.heart, p.tissues
        step = grid.step_mm
        u, v = st.uv(grid)
        lv_epi = st.lv_epicardium(u, v)
        (_, _), (lat_u, lat_v) = st.mitral_hinges()
        _, free_rv = st.rv_edges_at(st.tricuspid_u)
        groove_left = np.hypot(u - lat_u, v - (lat_v + st.lv_wall + 0.5 * h.av_groove_fat)) - h.av_groove_fat
        groove_right = np.hypot(u - st.tricuspid_u, v - (free_rv - st.rv_wall - 0.5 * h.av_groove_fat)) - (
            h.av_groove_fat * 1.1
        )
        apex_u = st.lv_centre[0] + st.lv_long_semi + st.apex_wall
        apex = np.hypot(u - apex_u, v - st.lv_centre[1]) - h.apical_fat
        ventricles = np.minimum(lv_epi, st.rv_epicardium(u, v))
        envelope = np.minimum(np.minimum(ventricles - h.epicardial_fat, groove_left), np.minimum(groove_right, apex))
        paint(canvas, coverage(envelope, step), t.fat)
        # the pericardium: a thin dark line outside the ventricles' fat
        paint(canvas, coverage(np.maximum(np.abs(envelope - 0.8) - 0.5, -u), step), t.pericardium)
        # coronary arteries in the atrioventricular grooves
        for gu, gv, r in (
            (lat_u, lat_v + st.lv_wall + 0.5 * h.av_groove_fat, 1.4),
            (st.tricuspid_u, free_rv - st.rv_wall - 0.5 * h.av_groove_fat, 1.7),
        ):
            paint(canvas, coverage(np.hypot(u - gu, v - gv) - r, step), t.blood * 0.85)
        # pulmonary veins draining into the LA roof
        lau, lav = st.la_centre
        roof_u = lau - (st.la_length / 2 + 5.0)
        for v_frac, angle_deg, radius, length in h.pulmonary_veins:
            start = (roof_u + 6.0, lav + v_frac * st.la_half_width)
            ang = math.radians(180.0 + angle_deg)
            end = (start[0] + length * math.cos(ang), start[1] + length * math.sin(ang))
            paint(canvas, coverage(band_sdf(u, v, start, end, radius), step), t.blood)
        # myocardium, then the cavities
        paint(canvas, coverage(np.minimum(lv_epi, st.rv_epicardium(u, v)), step), t.myocardium)
        atrial_walls = np.minimum(st.la_cavity(u, v, grow=h.atrial_wall), st.ra_cavity(u, v, grow=h.atrial_wall))
        paint(canvas, coverage(atrial_walls, step), t.myocardium)
        lv_cavity = coverage(st.lv_cavity(u, v), step)
        paint(canvas, lv_cavity, t.blood)
        for cavity in (st.rv_cavity(u, v, lv_epi), st.la_cavity(u, v), st.ra_cavity(u, v)):
            paint(canvas, coverage(cavity, step), t.blood)
        for side, along, across, radius in h.trabeculae:
            if side == 0:
                tu = along * st.lv_length
                _, cv = st.lv_centre
                tv = cv + across * st.lv_half_width_at(tu) * (1.0 if across > 0.8 else -1.0)
            else:
                tu = st.tricuspid_u + along * st.rv_length
                septal, free = st.rv_edges_at(tu)
                tv = free + (1.0 - across) * (septal - free)
            paint(canvas, coverage(np.hypot(u - tu, v - tv) - radius, step), t.myocardium)
        if h.coronary_sinus_radius > 0:
            a, b = (-4.0 - h.coronary_sinus_radius, lat_v + 2.0), (-3.0 - h.coronary_sinus_radius, st.ias_v - 6.0)
            paint(canvas, coverage(band_sdf(u, v, a, b, h.coronary_sinus_radius + 1.2), step), t.myocardium)
            paint(canvas, coverage(band_sdf(u, v, a, b, h.coronary_sinus_radius), step), t.blood)
        if h.papillary:
            _, cv = st.lv_centre
            pm = ellipse_sdf(
                u, v, 0.55 * st.lv_length, cv + 0.8 * st.lv_half_width, 7.0 + 2.0 * st.contraction, 3.5 + st.contraction
            )
            paint(canvas, coverage(pm, step), t.myocardium)
        if h.moderator_band:
            mu = st.tricuspid_u + 0.6 * st.rv_length
            _, free_at = st.rv_edges_at(mu - 5.0)
            paint(canvas, coverage(band_sdf(u, v, (mu, -st.septum / 2), (mu - 5.0, free_at), 1.6), step), t.myocardium)
        for hinge, tip in leaflet_segments(h, st):
            paint(canvas, coverage(band_sdf(u, v, hinge, tip, 0.7), step), t.valve)
        if with_tract:
            self._draw_tract(canvas, grid, st, lv_cavity)

    def _draw_tract(self, canvas: FloatArray, grid: Grid, st: HeartState, lv_cavity: FloatArray) -> None:
        """The tract over the chambers: its wall (where it is not open to the LV cavity), its blood, its valve."""
        p = self.patient
        tract, t = p.tract, p.tissues
        thickness = p.acquisition.slice_thickness_mm
        wall = tract_fraction(grid, tract, st, p.heart.base_descent, thickness, extra_radius=tract.wall)
        if not wall.any():
            return
        blood = tract_fraction(grid, tract, st, p.heart.base_descent, thickness)
        paint(canvas, wall * (1.0 - lv_cavity), t.myocardium)
        paint(canvas, blood, t.blood)
        # aortic valve cusps: closed across the annulus (bowed towards the LV), open against the wall in systole
        s, xs, ys, rs = tract.samples(st, p.heart.base_descent)
        k = int(np.argmin(np.abs(s - tract.valve_at)))
        k0, k1 = max(k - 1, 0), min(k + 1, len(s) - 1)
        tx, ty = xs[k1] - xs[k0], ys[k1] - ys[k0]
        norm = math.hypot(tx, ty) or 1.0
        tx, ty = tx / norm, ty / norm
        nx, ny = -ty, tx
        r = float(rs[k])
        cx, cy = float(xs[k]), float(ys[k])
        o = st.aortic_opening
        meet = (cx - 2.0 * tx, cy - 2.0 * ty)
        for side in (-1.0, 1.0):
            hinge = (cx + side * r * nx, cy + side * r * ny)
            opened = (cx + side * 0.8 * r * nx + 0.9 * r * tx, cy + side * 0.8 * r * ny + 0.9 * r * ty)
            tip = (meet[0] + o * (opened[0] - meet[0]), meet[1] + o * (opened[1] - meet[1]))
            cusp = coverage(segment_sdf(grid.x, grid.y, hinge, tip) - 0.7, grid.step_mm)
            paint(canvas, cusp * blood, t.valve)

    # ---------------------------------------------------------------------------------- acquisition effects

    def _output_coordinates(self) -> tuple[FloatArray, FloatArray]:
        xs = (np.arange(self.cols, dtype=np.float64) + 0.5 - self.cols / 2) * self.spacing
        ys = (np.arange(self.rows, dtype=np.float64) + 0.5 - self.rows / 2) * self.spacing
        return xs[None, :], ys[:, None]

    def _coil_gain(self) -> FloatArray:
        """Receive sensitivity: anterior and posterior coil arrays brighten the chest walls; normalised to 1 at
        the crux."""
        acq, b = self.patient.acquisition, self.patient.body
        x, y = self._output_coordinates()
        half_x, half_y = self.cols * self.spacing / 2, self.rows * self.spacing / 2

        def log_gain(xv: FloatArray | float, yv: FloatArray | float) -> FloatArray:
            depth = ((np.asarray(yv) - b.centre_y) / b.half_depth) ** 2
            g: FloatArray = (
                acq.coil_anterior_posterior * depth
                + acq.coil_gradient_x * np.asarray(xv) / half_x
                + acq.coil_gradient_y * np.asarray(yv) / half_y
            )
            return g

        field = log_gain(x, y) - log_gain(self.patient.heart.crux_x, self.patient.heart.crux_y)
        gain: FloatArray = np.exp(field)
        return gain

    def _banding(self) -> FloatArray:
        acq = self.patient.acquisition
        x, y = self._output_coordinates()
        if acq.banding_depth <= 0:
            return np.ones((self.rows, self.cols), dtype=np.float64)
        a = math.radians(acq.banding_angle_deg)
        # slightly curved iso-frequency lines of a smooth off-resonance field
        psi = (x * math.cos(a) + y * math.sin(a) + 0.002 * (x * x + y * y)) / acq.banding_period_mm + acq.banding_phase
        dist = np.abs(psi - np.round(psi)) * acq.banding_period_mm
        band: FloatArray = 1.0 - acq.banding_depth * np.exp(-((dist / 2.5) ** 2))
        return band

    # -------------------------------------------------------------------------------------------------- frames

    def signal(self, frame: int, with_tract: bool = True) -> FloatArray:
        """The noise-free tissue signal of ``frame`` at the output matrix (before coil, blur and noise)."""
        p = self.patient
        st = heart_state(p.heart, p.cycle, p.trigger_time_ms(frame))
        g = self.heart_window
        fine = self.background_fine[g.r0 : g.r1, g.c0 : g.c1].copy()
        self._draw_heart(fine, g, st, with_tract)
        out = self.background.copy()
        out[g.r0 // FINE : g.r1 // FINE, g.c0 // FINE : g.c1 // FINE] = downsample(fine)
        return out

    def frame(self, frame: int, with_tract: bool = True) -> Frame:
        """Frame ``frame`` of the cine (``with_tract=False``: the same frame without the outflow tract)."""
        p = self.patient
        if not 0 <= frame < p.n_frames:
            raise IndexError(f"frame {frame} out of range 0..{p.n_frames - 1}")
        image = self.signal(frame, with_tract) * self.gain * self.band
        sigma = p.acquisition.psf_sigma_px
        image = np.asarray(
            cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE),
            dtype=np.float64,
        )
        noise_rng = np.random.default_rng(p.noise_seed(frame))
        noise_sd = p.tissues.blood / p.acquisition.snr
        real = image + noise_rng.normal(0.0, noise_sd, size=image.shape)
        imag = noise_rng.normal(0.0, noise_sd, size=image.shape)
        magnitude = np.sqrt(real * real + imag * imag) / self.scale
        pixels = np.round(np.clip(magnitude, 0.0, 1.0) * MAX_VALUE).astype(np.uint16)
        vis = p.visibilities[frame]
        return Frame(
            pixels=pixels,
            frame_index=frame,
            trigger_time_ms=p.trigger_time_ms(frame),
            label=int(vis.positive),
            box=vis.box,
            visible_area_mm2=vis.area_mm2,
        )

    def frames(self) -> list[Frame]:
        return [self.frame(k) for k in range(self.patient.n_frames)]

"""Synthetic 4-chamber cardiac MR cines with and without the left ventricular outflow tract (LVOT) in the slice.

``python -m models.synth.cmr --out DIR --patients-train N --patients-dev N --patients-test N --seed K
[--frames-min 20 --frames-max 30] [--format png16|png] [--dicom [--dicom-splits test]] [--workers W]``

The 2023 paper's second problem (Özer et al., "Explainable image quality assessment for medical imaging", §4.1.2):
an off-axis 4-chamber slice cuts through the outflow tract; every frame of a 2D+time cine is classified on its
own. The real data cannot ship, so this package draws balanced-SSFP cines — four chambers with myocardium, septa,
valves and atrioventricular planes, epicardial and mediastinal fat, lungs, chest wall, spine and aorta; cardiac
motion over 20–30 frames at a per-patient heart rate; Rician noise, coil bias, partial volume — in which the
outflow tract shows in some frames of the positive patients (each such frame has its own box) and in no frame of
the negative ones. It writes the Object-CXR layout (one row per frame, patient-wise splits, side files mapping
frames to patients and cardiac phases) and, optionally, DICOM: one Enhanced MR object and one classic MR series
per patient. See docs/data.md.

Modules: ``cycle`` (cardiac timing), ``anatomy`` (heart, chest, acquisition; the heart at any instant), ``lvot``
(the tract and the visibility rule), ``patient`` (drawing a patient), ``render`` (frames), ``writer`` (the data
set), ``dicom``, ``contact_sheet``, ``centre_control`` (the centre-prior Pointing Game).
"""

from models.synth.cmr.patient import Patient, sample_patient
from models.synth.cmr.render import CineRenderer, Frame
from models.synth.cmr.writer import generate

__all__ = ["CineRenderer", "Frame", "Patient", "generate", "sample_patient"]

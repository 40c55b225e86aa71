"""The synthetic cine as DICOM: one Enhanced MR Image object and one classic MR Image series per patient.

``FOLDER/enhanced.dcm``: Enhanced MR Image Storage (1.2.840.10008.5.1.4.1.1.4.1), all frames in one object,
``NumberOfFrames`` = the cine's frame count. Shared functional groups: pixel measures, plane position and
orientation, frame anatomy (heart), pixel value transformation, VOI LUT, MR frame type, timing, field-of-view
geometry, echo, modifiers, coils and averages. Per-frame functional groups: frame content (acquisition time,
temporal position, dimension index) and cardiac synchronisation (``NominalCardiacTriggerDelayTime``). The one
dimension is the trigger delay.

``FOLDER/series/IM_0001.dcm`` …: MR Image Storage (1.2.840.10008.5.1.4.1.1.4), one single-frame instance per
frame with ``InstanceNumber`` (1-based frame order), ``TriggerTime`` (ms after the R wave),
``CardiacNumberOfImages``, ``NominalInterval`` and ``HeartRate``.

Both are one study (same Study and Frame of Reference UIDs; series 1 classic, series 2 enhanced) and carry the
stored 12-bit values of the PNG frames unchanged (``BitsStored`` 12, unsigned, ``MONOCHROME2``, explicit VR
little endian). UIDs are name-based UUIDs of (seed, split, patient, series, frame) under the 2.25 root, so the same
command writes the same UIDs. Geometry: the 4-chamber plane is a double-oblique plane of the patient (LPS)
tilted ``tilt_from_axial_deg`` from axial about the left–right axis and ``tilt_sagittal_deg`` about the
anterior–posterior axis, rows running to the patient's left and columns posteriorly, as the images are drawn.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from models.synth.cmr.patient import Patient
from models.synth.cmr.render import BITS_STORED, Frame

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLEMENTATION_CLASS_UID = "2.25.262104135712393426744393651064146355411"  # NormGate's, fixed
MANUFACTURER = "NormGate synthetic"
MODEL_NAME = "models.synth.cmr"
SOFTWARE_VERSION = "1"
STUDY_EPOCH = dt.datetime(2023, 1, 2, 8, 0, 0)
LARMOR_MHZ_PER_T = 42.577478


def uid(patient: Patient, *parts: object) -> UID:
    """A deterministic UID for (seed, split, patient, parts…): ``2.25.`` + a name-based (version 5) UUID as an
    integer (ISO/IEC 9834-8), so the same command writes the same UIDs."""
    name = "/".join(["normgate-cmr-synth", str(patient.seed), patient.split, str(patient.index), *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


def orientation(patient: Patient) -> tuple[list[float], list[float], list[float]]:
    """(row direction, column direction, normal) of the image plane in patient LPS coordinates."""
    acq = patient.acquisition
    a, b = math.radians(acq.tilt_from_axial_deg), math.radians(acq.tilt_sagittal_deg)
    # axial rows → patient left (+x), columns → posterior (+y); tilt about x (caudal tilt of the anterior side),
    # then about y
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(a), -math.sin(a)])
    rot_y = np.array([[math.cos(b), 0.0, math.sin(b)], [0.0, 1.0, 0.0], [-math.sin(b), 0.0, math.cos(b)]])
    row, col = rot_y @ row, rot_y @ col
    normal = np.cross(row, col)
    return [float(v) for v in row], [float(v) for v in col], [float(v) for v in normal]


def _ds(value: float, digits: int = 6) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]


def _geometry(patient: Patient) -> tuple[list[str], list[str]]:
    """ImageOrientationPatient and ImagePositionPatient (centre of the first transmitted pixel)."""
    acq = patient.acquisition
    row, col, _ = orientation(patient)
    centre = np.array([20.0, -20.0, -40.0]) + 0.1 * (patient.index % 7)  # the heart, roughly, in LPS mm
    d = acq.pixel_spacing_mm
    first = centre - np.array(row) * d * (acq.cols - 1) / 2 - np.array(col) * d * (acq.rows - 1) / 2
    return [_ds(v) for v in row + col], [_ds(float(v), 4) for v in first]


def _study_datetime(patient: Patient) -> dt.datetime:
    return STUDY_EPOCH + dt.timedelta(days=patient.index, minutes=7 * (patient.seed % 50))


def _window(frames: Sequence[Frame]) -> tuple[str, str]:
    """The display window written with the frames: the whole 12-bit range (LINEAR, centre 2048, width 4096).

    A decoder applies the window (PS3.3 C.11.2.1.2.1: (x - 2047.5) / 4095 + 0.5 = x / 4095), so a DICOM frame
    decodes (models.imaging) to the same [0, 1] image as its 16-bit PNG frame (x · 65535 / 4095, rounded): the model
    trained on the PNG layout sees the same input when the cine is served as DICOM. A tighter percentile window
    would look nicer in a PACS but would stretch the contrast the model never saw in training.
    """
    del frames  # the window does not depend on the content, by design
    full_scale = 1 << BITS_STORED
    return _ds(full_scale / 2, 1), _ds(float(full_scale), 1)


def _common(ds: Dataset, patient: Patient, series_number: int, sop_class: str, sop_instance: str) -> None:
    """Patient, General Study, General Series, Frame of Reference, General Equipment and SOP Common."""
    acq = patient.acquisition
    when = _study_datetime(patient)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = f"SYNTHETIC^CMR{patient.index:05d}"
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image; no person was ever imaged"
    ds.StudyInstanceUID = uid(patient, "study")
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{patient.index + 1}"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Cardiac MR (synthetic)"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = uid(patient, "series", series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = acq.series_description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = (when + dt.timedelta(minutes=series_number)).strftime("%H%M%S")
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uid(patient, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.InstitutionName = "NormGate synthetic data"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.SeriesTime
    ds.BurnedInAnnotation = "NO"


def _pixel_module(ds: Dataset, rows: int, cols: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = "NORMGATE_1"
    return meta


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)


def _value(keyword: str, value: object) -> object:
    """A Python float in the form its attribute's VR wants: DS text (≤ 16 characters) or a binary float."""
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [_value(keyword, v) for v in value]
    if not isinstance(value, float):
        return value
    vr = dictionary_VR(keyword)
    if vr in ("FD", "FL"):
        return round(value, 6)
    if vr == "DS":
        return _ds(value)
    raise TypeError(f"{keyword} ({vr}) cannot take the float {value!r}")


def _put(ds: Dataset, **attributes: object) -> Dataset:
    for key, value in attributes.items():
        setattr(ds, key, _value(key, value))
    return ds


def _item(**attributes: object) -> Dataset:
    return _put(Dataset(), **attributes)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _phase_encoding_steps(patient: Patient) -> int:
    return patient.acquisition.rows


def write_series(patient: Patient, frames: Sequence[Frame], folder: Path) -> list[Path]:
    """The classic MR Image Storage series: ``folder/IM_0001.dcm`` … one instance per frame."""
    acq, cycle = patient.acquisition, patient.cycle
    iop, ipp = _geometry(patient)
    center, width = _window(frames)
    when = _study_datetime(patient)
    paths = []
    for f in frames:
        sop = uid(patient, "series", 1, "instance", f.frame_index)
        ds = Dataset()
        ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop)
        _common(ds, patient, 1, MR_IMAGE_STORAGE, sop)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = ds.StudyDate
        ds.AcquisitionTime = (when + dt.timedelta(minutes=1, milliseconds=f.trigger_time_ms)).strftime("%H%M%S.%f")
        ds.InstanceNumber = f.frame_index + 1
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SS"
        ds.ScanOptions = "CG"
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "bSSFP_cine_retro"
        ds.AngioFlag = "N"
        ds.SliceThickness = _ds(acq.slice_thickness_mm, 3)
        ds.RepetitionTime = _ds(acq.repetition_time_ms, 3)
        ds.EchoTime = _ds(acq.echo_time_ms, 3)
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = _ds(LARMOR_MHZ_PER_T * acq.field_strength_t, 6)
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = _ds(acq.field_strength_t, 1)
        ds.NumberOfPhaseEncodingSteps = _phase_encoding_steps(patient)
        ds.EchoTrainLength = 1
        ds.PercentSampling = "100"
        ds.PercentPhaseFieldOfView = _ds(100.0 * acq.rows / acq.cols, 4)
        ds.PixelBandwidth = "930"
        ds.TriggerTime = _ds(f.trigger_time_ms, 2)
        ds.NominalInterval = round(cycle.rr_ms)
        ds.BeatRejectionFlag = "N"
        ds.HeartRate = round(cycle.heart_rate_bpm)
        ds.CardiacNumberOfImages = patient.n_frames
        ds.ReceiveCoilName = "Body array"
        ds.TransmitCoilName = "Body"
        ds.AcquisitionMatrix = [0, acq.cols, acq.rows, 0]
        ds.InPlanePhaseEncodingDirection = "COL"
        ds.FlipAngle = _ds(acq.flip_angle_deg, 2)
        ds.PatientOrientation = ["L", "P"]
        ds.ImagePositionPatient = ipp
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = "0"
        ds.PixelSpacing = [_ds(acq.pixel_spacing_mm), _ds(acq.pixel_spacing_mm)]
        ds.TemporalPositionIdentifier = f.frame_index + 1
        ds.NumberOfTemporalPositions = patient.n_frames
        ds.TemporalResolution = _ds(cycle.rr_ms / patient.n_frames, 2)
        _pixel_module(ds, acq.rows, acq.cols)
        ds.WindowCenter = center
        ds.WindowWidth = width
        ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(f.pixels, dtype="<u2").tobytes()
        path = folder / f"IM_{f.frame_index + 1:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def write_enhanced(patient: Patient, frames: Sequence[Frame], path: Path) -> Path:
    """The Enhanced MR Image Storage object holding every frame."""
    acq, cycle = patient.acquisition, patient.cycle
    iop, ipp = _geometry(patient)
    center, width = _window(frames)
    when = _study_datetime(patient) + dt.timedelta(minutes=2)
    sop = uid(patient, "series", 2, "instance", 0)
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR_STORAGE, sop)
    _common(ds, patient, 2, ENHANCED_MR_STORAGE, sop)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CINE", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    _put(ds, AcquisitionDuration=cycle.rr_ms * acq.rows / 16 / 1000.0)  # ~16 lines per segment and beat
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    _put(ds, MagneticFieldStrength=acq.field_strength_t)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "Synthetic 4-chamber cine (NormGate models.synth.cmr); not a patient image"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = len(frames)
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "UNKNOWN"
    # MR Pulse Sequence module
    ds.PulseSequenceName = "bSSFP_cine_retro"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "FREE_PRECESSION"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL"
    ds.NumberOfKSpaceTrajectories = 1
    # Cardiac Synchronization module
    ds.CardiacSynchronizationTechnique = "RETROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    _put(ds, CardiacRRIntervalSpecified=cycle.rr_ms)
    ds.CardiacBeatRejectionTechnique = "NONE"
    ds.LowRRValue = round(cycle.rr_ms * 0.8)
    ds.HighRRValue = round(cycle.rr_ms * 1.2)
    ds.IntervalsAcquired = max(1, round(acq.rows / 16))
    ds.IntervalsRejected = 0
    ds.AcquisitionContextSequence = DicomSequence([])
    # Multi-frame Dimension module: one dimension, the nominal trigger delay
    organisation = uid(patient, "series", 2, "dimension-organisation")
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=organisation)])
    ds.DimensionOrganizationType = "3D_TEMPORAL"
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=organisation,
                DimensionIndexPointer=0x00209153,  # NominalCardiacTriggerDelayTime
                FunctionalGroupPointer=0x00189118,  # CardiacSynchronizationSequence
                DimensionDescriptionLabel="Trigger delay",
            )
        ]
    )
    _pixel_module(ds, acq.rows, acq.cols)
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence(
        [
            _item(
                PixelSpacing=[acq.pixel_spacing_mm, acq.pixel_spacing_mm],
                SliceThickness=acq.slice_thickness_mm,
            )
        ]
    )
    shared.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=ipp)])
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=iop)])
    shared.FrameAnatomySequence = DicomSequence(
        [_item(AnatomicRegionSequence=DicomSequence([_code("80891009", "SCT", "Heart")]), FrameLaterality="U")]
    )
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]
    )
    shared.FrameVOILUTSequence = DicomSequence([_item(WindowCenter=center, WindowWidth=width)])
    shared.MRImageFrameTypeSequence = DicomSequence(
        [
            _item(
                FrameType=["ORIGINAL", "PRIMARY", "CINE", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
                ComplexImageComponent="MAGNITUDE",
                AcquisitionContrast="UNKNOWN",
            )
        ]
    )
    shared.MRTimingAndRelatedParametersSequence = DicomSequence(
        [
            _item(
                RepetitionTime=acq.repetition_time_ms,
                FlipAngle=acq.flip_angle_deg,
                EchoTrainLength=1,
                RFEchoTrainLength=1,
                GradientEchoTrainLength=1,
                SpecificAbsorptionRateSequence=DicomSequence(
                    [_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=1.2)]
                ),
                GradientOutputType="DB_DT",
                GradientOutput=18.0,
                OperatingModeSequence=DicomSequence(
                    [
                        _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                        for kind in ("STATIC FIELD", "RF", "GRADIENT")
                    ]
                ),
            )
        ]
    )
    shared.MRFOVGeometrySequence = DicomSequence(
        [
            _item(
                InPlanePhaseEncodingDirection="COLUMN",
                MRAcquisitionFrequencyEncodingSteps=acq.cols,
                MRAcquisitionPhaseEncodingStepsInPlane=_phase_encoding_steps(patient),
                PercentSampling="100",
                PercentPhaseFieldOfView=100.0 * acq.rows / acq.cols,
            )
        ]
    )
    shared.MREchoSequence = DicomSequence([_item(EffectiveEchoTime=acq.echo_time_ms)])
    shared.MRModifierSequence = DicomSequence(
        [
            _item(
                InversionRecovery="NO",
                FlowCompensation="NONE",
                T2Preparation="NO",
                SpectrallySelectedExcitation="NONE",
                SpatialPresaturation="NONE",
                PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        ]
    )
    shared.MRImagingModifierSequence = DicomSequence(
        [
            _item(
                MagnetizationTransfer="NONE",
                BloodSignalNulling="NO",
                Tagging="NONE",
                TransmitterFrequency=LARMOR_MHZ_PER_T * acq.field_strength_t,
                PixelBandwidth="930",
            )
        ]
    )
    shared.MRReceiveCoilSequence = DicomSequence(
        [
            _item(
                ReceiveCoilName="Body array",
                ReceiveCoilManufacturerName=MANUFACTURER,
                ReceiveCoilType="MULTICOIL",
                QuadratureReceiveCoil="NO",
                MultiCoilDefinitionSequence=DicomSequence(
                    [_item(MultiCoilElementName="ANT", MultiCoilElementUsed="YES")]
                ),
                MultiCoilConfiguration="anterior+posterior",
            )
        ]
    )
    shared.MRTransmitCoilSequence = DicomSequence(
        [_item(TransmitCoilName="Body", TransmitCoilManufacturerName=MANUFACTURER, TransmitCoilType="BODY")]
    )
    shared.MRAveragesSequence = DicomSequence([_item(NumberOfAverages="1")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    duration = cycle.rr_ms / patient.n_frames
    for f in frames:
        item = Dataset()
        acquired = (when + dt.timedelta(milliseconds=f.trigger_time_ms)).strftime("%Y%m%d%H%M%S.%f")
        item.FrameContentSequence = DicomSequence(
            [
                _item(
                    FrameAcquisitionNumber=1,
                    FrameReferenceDateTime=acquired,
                    FrameAcquisitionDateTime=acquired,
                    FrameAcquisitionDuration=duration,
                    CardiacCyclePosition="UNDETERMINED",
                    RespiratoryCyclePosition="UNDETERMINED",
                    TemporalPositionIndex=f.frame_index + 1,
                    DimensionIndexValues=[f.frame_index + 1],
                    FrameComments=f"frame {f.frame_index + 1} of {patient.n_frames}",
                )
            ]
        )
        item.CardiacSynchronizationSequence = DicomSequence(
            [
                _item(
                    NominalCardiacTriggerDelayTime=f.trigger_time_ms,
                    ActualCardiacTriggerDelayTime=f.trigger_time_ms,
                    IntervalsAcquired=max(1, round(acq.rows / 16)),
                    IntervalsRejected=0,
                    HeartRate=round(cycle.heart_rate_bpm),
                    RRIntervalTimeNominal=cycle.rr_ms,
                    LowRRValue=round(cycle.rr_ms * 0.8),
                    HighRRValue=round(cycle.rr_ms * 1.2),
                )
            ]
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    stack = np.stack([np.ascontiguousarray(f.pixels, dtype="<u2") for f in frames])
    ds.PixelData = stack.tobytes()
    _save(ds, path)
    return path


def write_patient_dicom(patient: Patient, frames: Sequence[Frame], folder: Path) -> tuple[Path, list[Path]]:
    """``folder/enhanced.dcm`` and ``folder/series/IM_*.dcm`` for one patient."""
    enhanced = write_enhanced(patient, frames, folder / "enhanced.dcm")
    series = write_series(patient, frames, folder / "series")
    return enhanced, series

"""Service settings, read once from ``NORMGATE_*`` environment variables (README, "Configuration").

Every value has a default that makes ``make run`` work on a laptop: the shipped default checkpoint, CPU unless a
GPU is present, loopback only. ``get_settings()`` is cached so every part of the app sees the same values; tests
build their own ``Settings(...)`` and hand it to ``create_app``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.imaging.assessability import DEFAULT_MIN_SIDE
from models.imaging.limits import DEFAULT_LIMITS, MIB, DecodeLimits
from service.evaluation.limits import DEFAULT_MAX_QUEUED_JOBS
from service.keys import ApiKey, parse_entries

# Endpoints NORMGATE_PUBLIC_ENDPOINTS may leave open; "models" covers GET /models and GET /methods.
PUBLIC_ENDPOINT_NAMES = frozenset({"healthz", "readyz", "metrics", "models"})
# NORMGATE_DIMSE_RESULT_DESTINATION: AE title (1-16 characters, no backslash) @ host or [IPv6] : port.
DIMSE_DESTINATION = re.compile(r"([^@\\]{1,16})@(\[[0-9a-fA-F:]+\]|[^:@\s]+):(\d{1,5})")
# The checkout this package lives in: the shipped checkpoints are found from any working directory.
REPO_ROOT = Path(__file__).resolve().parents[1]
# The store's SQLite file in NORMGATE_STATE_DIR when NORMGATE_DATABASE_URL is unset.
DATABASE_FILE = "normgate.sqlite3"


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped NORMGATE_API_KEYS entry must not be echoed into a log.
    model_config = SettingsConfigDict(env_prefix="NORMGATE_", extra="ignore", hide_input_in_errors=True)
    _api_key_table: list[ApiKey] | None = PrivateAttr(default=None)  # parsed once from api_keys
    _api_key_entries: list[str] | None = PrivateAttr(default=None)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the HTTP server.")
    models_dir: Path = Field(
        REPO_ROOT / "models" / "checkpoints",
        description="Folder whose sub-folders are checkpoints; every one is loaded.",
    )
    default_model: str = Field("default", description="Model used when /assess is called without ?model=.")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    max_batch_size: int = Field(
        4,
        ge=1,
        le=256,
        description="Largest batch one forward pass takes. 4 served the most under overload on CPU, with the "
        'shortest tail (docs/benchmarks.md, "Batching study"); a GPU may take more.',
    )
    max_batch_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="How long the oldest queued request may wait for others to fill its batch."
    )
    max_queue_size: int = Field(64, ge=1, description="Queued requests per model; beyond it 503 overloaded.")
    request_timeout_ms: float = Field(
        10_000.0, gt=0, description="Per-request deadline from arrival; still queued after it → 504 timeout."
    )
    # The decode limits' defaults are the library's (models/imaging/limits.py), defined once.
    max_body_mb: float = Field(
        DEFAULT_LIMITS.max_body_bytes / MIB, gt=0, description="Largest accepted request body (413 beyond it)."
    )
    max_pixels: int = Field(
        DEFAULT_LIMITS.max_pixels, ge=1, description="Largest decoded image, width × height × frames (413 beyond it)."
    )
    max_dicom_element_mb: float = Field(
        DEFAULT_LIMITS.max_dicom_element_bytes / MIB,
        gt=0,
        description="Largest declared DICOM element length (413 beyond it).",
    )
    max_frames: int = Field(
        DEFAULT_LIMITS.max_frames,
        ge=1,
        le=4096,
        description="Most frames of one multi-frame DICOM (a cine) /assess takes (413 beyond it, from the header); "
        "each frame is one model input and counts against NORMGATE_MAX_QUEUE_SIZE.",
    )
    series_settle_s: float = Field(
        10.0,
        gt=0,
        le=86_400,
        description="A series whose instances came in more than one STOW-RS request (or by C-STORE) gets its "
        "series result this many seconds after its last instance arrived; one that came in one request gets it "
        "at once.",
    )
    min_image_side: int = Field(
        DEFAULT_MIN_SIDE,
        ge=1,
        le=65535,
        description="Shortest image side (pixels) the gate judges; a smaller image is answered unassessable "
        'with reason too_small (docs/api.md, "Unassessable").',
    )
    max_decode_mb: float = Field(
        DEFAULT_LIMITS.max_decode_bytes / MIB,
        gt=0,
        description="Largest estimated peak memory of decoding and preparing one image: the decoded bytes its "
        "header declares × the pipeline's measured working factor for its format (docs/ingestion.md, "
        '"Decode budget"); 413 beyond it, before any pixel is decoded.',
    )
    decode_large_mb: float = Field(
        256.0,
        gt=0,
        description="Images whose estimated decode memory is above this are decoded in the large lane (one "
        "process at the lowest priority), so ordinary ones never wait behind them; each ordinary decode process "
        "takes at most this much.",
    )
    decode_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that decode ordinary uploads (plus one for large ones); 0: one fewer than the CPUs "
        "this process may use (at least 1, at most 8), so the model thread keeps a core to itself.",
    )
    decode_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Scheduling niceness added to the ordinary decode processes and the threads that receive and "
        "resize their images (Linux; 0: same as the model). The decode "
        "pool should use the cycles the model leaves, not take them: with 2 decode threads and the "
        "model thread on 2 cores the model pass ran 1.7× slower at 0 and 1.1× at 10 "
        '(docs/benchmarks.md, "Decode priority").',
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Intra-op threads for model compute; 0 keeps torch's default (one per core). On an "
        "oversubscribed CPU 1 can be several times faster (no spinning threads fighting for cores).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API key entries, each 'ID:sha256:<hex digest>[:SCOPES]' (python -m "
        "service.keys hash KEY --id ID) or 'ID:<plain key>[:SCOPES]' (hashed at load, with a warning); SCOPES "
        "'+'-joined from assess, evaluate, audit (default assess+evaluate). Entries without an id are key-1, "
        "key-2, … by position. When set, /assess, /render and /dicomweb… need a key with 'assess', /evaluate… "
        "one with 'evaluate'. Unset: every endpoint is open (a loud warning at start-up, "
        "normgate_auth_enabled 0).",
    )
    public_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["healthz", "readyz", "metrics", "models"],
        description="Comma-separated endpoints that stay open when API keys are set: any of healthz, readyz, "
        "metrics, models (GET /models and /methods); the viewer page and the OpenAPI schema are "
        "always open, every endpoint that takes an image or a job never is.",
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest time to receive a request body; a client that trickles it gets 408."
    )
    max_concurrent_requests: int = Field(
        0,
        ge=0,
        description="HTTP requests in progress at once (probes not counted); one more is answered 503 "
        "overloaded before its body is read; 0: no limit.",
    )
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time to receive a request's headers, from the connection's opening or the request's "
        "first byte; slower → 408 and the connection closed (uvicorn alone has no such limit).",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="How long an idle keep-alive connection stays open between requests."
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: /readyz answers 503 at once and new requests 503; requests already accepted may "
        "take this long to finish.",
    )
    worker_restart_delay_s: float = Field(
        1.0, ge=0, le=600, description="Pause before a model worker thread that died is started again."
    )
    data_dir: Path = Field(Path("data"), description="Root folder evaluation jobs may read data sets from.")
    evaluate_max_queued: int = Field(
        DEFAULT_MAX_QUEUED_JOBS,
        ge=1,
        le=10_000,
        description="Evaluation jobs waiting to run (one runs at a time); one more is answered 503 overloaded.",
    )
    state_dir: Path = Field(
        REPO_ROOT / "state",
        description="The one writable folder for state that outlives a request: the audit database (SQLite by "
        "default), the result outbox, spools. state/ of the checkout for make run; a volume in compose and "
        "Kubernetes (their root filesystem is read-only).",
    )
    # The store: audit trail, verdicts, shared result instances (docs/operations.md, "Audit and calibration").
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the store: unset = SQLite file normgate.sqlite3 in state_dir (one replica); "
        "postgresql+psycopg://user:password@host/db for several replicas. Migrations run at start-up.",
    )
    audit_enabled: bool = Field(True, description="Record every decision in the audit trail (false: none recorded).")
    audit_buffer_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Decisions waiting in memory for the audit writer; beyond it they go straight to the spool "
        "file, so none is lost and /assess never waits for the database.",
    )
    audit_retention_days: float = Field(
        365.0,
        ge=0,
        description="Audit records (and their verdicts) older than this are deleted by an hourly task; 0 keeps them.",
    )
    # DICOMweb (POST /dicomweb/studies, docs/integration.md).
    dicomweb_max_instances: int = Field(
        32, ge=1, le=1024, description="Most instances (multipart parts) one STOW-RS request may carry (413 beyond)."
    )
    dicomweb_push_url: str | None = Field(
        None,
        description="DICOMweb root (e.g. http://pacs:8042/dicom-web) the Secondary Capture and SR of every "
        "STOW-RS assessment are stored to (STOW-RS); unset: no push.",
    )
    dicomweb_push_authorization: SecretStr | None = Field(
        None, description="Authorization header value for the push server, e.g. 'Basic …' or 'Bearer …'."
    )
    dicomweb_push_queue_size: int = Field(
        2000,
        ge=1,
        description="Result sets the durable outbox holds (about 3 MB each on disk); beyond it new ones are "
        "dropped (and counted).",
    )
    dicomweb_push_backoff_s: float = Field(
        0.5, ge=0, description="Wait after the first failed delivery; doubles after each further failure."
    )
    dicomweb_push_backoff_max_s: float = Field(
        60.0, gt=0, description="Longest wait between delivery attempts (the cap of the doubling)."
    )
    dicomweb_push_max_age_s: float = Field(
        86_400.0, gt=0, description="A result set not delivered this long after it was made is given up (logged)."
    )
    dicomweb_push_timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one push request.")
    # DICOM networking (docs/integration.md, "DIMSE"): a C-STORE listener and results sent back by C-STORE.
    dimse_port: int | None = Field(
        None, ge=1, le=65535, description="TCP port of the DICOM (C-STORE) listener; unset: no listener."
    )
    dimse_ae_title: str = Field(
        "NORMGATE", min_length=1, max_length=16, description="NormGate's AE title (listener and result C-STORE)."
    )
    dimse_allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated calling AE titles the listener accepts associations from; empty: any.",
    )
    dimse_result_destination: str | None = Field(
        None,
        description="AE@host:port that every result set (SC, SEG, SR) is sent to by C-STORE; unset: none.",
    )
    dicomweb_result_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory for recent result instances served by WADO-RS GET /dicomweb/…/instances/"
        "{uid}; oldest dropped first; 0 disables.",
    )
    dicomweb_result_retention_hours: float = Field(
        24.0,
        ge=0,
        description="Result instances are also kept this long in the store, so any replica serves them by "
        "WADO-RS; 0: only this process's memory cache.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # A comma-separated env value is easier to write in a shell or a Kubernetes secret than JSON.
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys", mode="after")
    @classmethod
    def _hash_keys(cls, value: list[str]) -> list[str]:
        # Only digests are kept: the settings object (its repr, a crash dump) never holds a usable key. Every
        # entry is kept in its full form, ID:sha256:<hex>:scopes, so ids given by position stay with their key.
        return [key.entry for key in parse_entries(value)]

    @field_validator("dimse_allowed_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: object) -> object:
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("dimse_result_destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value:
            match = DIMSE_DESTINATION.fullmatch(value.strip())
            if not match or not 1 <= int(match.group(3)) <= 65535:
                raise ValueError(f"expected AE@host:port (AE title 1-16 characters, port 1-65535), got {value!r}")
        return value or None

    @field_validator("public_endpoints", mode="before")
    @classmethod
    def _split_public(cls, value: object) -> object:
        if isinstance(value, str):
            value = [e.strip() for e in value.split(",") if e.strip()]
        unknown = sorted(set(value) - PUBLIC_ENDPOINT_NAMES) if isinstance(value, (list, tuple, set)) else []
        if unknown:
            raise ValueError(f"unknown endpoint name(s) {unknown}; choose from {sorted(PUBLIC_ENDPOINT_NAMES)}")
        return value

    @property
    def api_key_table(self) -> list[ApiKey]:
        """The configured keys (id, digest, scopes); empty when authentication is off."""
        if self._api_key_table is None or self._api_key_entries != self.api_keys:
            self._api_key_table = parse_entries(self.api_keys)
            self._api_key_entries = list(self.api_keys)
        return self._api_key_table

    @property
    def store_url(self) -> str:
        """The store's SQLAlchemy URL: NORMGATE_DATABASE_URL, or SQLite in state_dir."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(Path(self.state_dir) / DATABASE_FILE).resolve()}"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def max_dicom_element_bytes(self) -> int:
        return int(self.max_dicom_element_mb * MIB)

    @property
    def decode_limits(self) -> DecodeLimits:
        """The library's decode limits with this service's values (the rest keep the library's defaults)."""
        return DecodeLimits(
            max_body_bytes=self.max_body_bytes,
            max_pixels=self.max_pixels,
            max_dicom_element_bytes=self.max_dicom_element_bytes,
            max_decode_bytes=int(self.max_decode_mb * MIB),
            max_frames=self.max_frames,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()

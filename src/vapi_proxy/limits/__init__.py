"""Rate, quota, concurrency and budget limits as one atomic reservation per request."""

from vapi_proxy.limits.base import (
    AdmissionRequest,
    ExpiredHook,
    HealthStatus,
    Hold,
    Limiter,
    Reservation,
    RuleUsage,
    create_limiter,
)
from vapi_proxy.limits.config import LimitRule, LimitsSettings

__all__ = [
    "AdmissionRequest",
    "ExpiredHook",
    "HealthStatus",
    "Hold",
    "LimitRule",
    "Limiter",
    "LimitsSettings",
    "Reservation",
    "RuleUsage",
    "create_limiter",
]

"""Rate, quota, concurrency and budget limits as one atomic reservation per request."""

from vapi_proxy.limits.base import (
    AdmissionRequest,
    HealthStatus,
    Hold,
    Limiter,
    Reservation,
    RuleUsage,
)
from vapi_proxy.limits.config import LimitRule, LimitsSettings
from vapi_proxy.limits.registry import create_limiter

__all__ = [
    "AdmissionRequest",
    "HealthStatus",
    "Hold",
    "LimitRule",
    "Limiter",
    "LimitsSettings",
    "Reservation",
    "RuleUsage",
    "create_limiter",
]

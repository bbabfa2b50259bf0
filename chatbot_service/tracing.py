"""Traces over OTLP, only when an endpoint is configured. Edge: the OpenTelemetry SDK and its exporter.

Configured by the standard variables alone (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, ...), which the SDK reads itself. Without an endpoint nothing
of OpenTelemetry is imported (about 70 ms and several MB), and turns cost nothing extra.

Spans carry the GenAI attributes and never a prompt or a reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracer_from_environ(env: Mapping[str, str]) -> tuple[Tracer, Callable[[], None]] | None:
    """A tracer exporting over OTLP/HTTP and the function that flushes and stops it, or None when no
    endpoint is configured (or ``OTEL_TRACES_EXPORTER`` / ``OTEL_SDK_DISABLED`` turn traces off)."""
    if not any(env.get(name) for name in ENDPOINT_VARIABLES):
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp") == "none" or env.get("OTEL_SDK_DISABLED") == "true":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from chatbot_service import __version__

    defaults = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "kubechat"})
    resource = defaults.merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    # The endpoint and the batch delay are read from the app's environment (which is os.environ in a
    # pod); the exporter reads the other OTEL_EXPORTER_OTLP_* variables itself.
    exporter = OTLPSpanExporter(endpoint=traces_endpoint(env))
    delay = env.get("OTEL_BSP_SCHEDULE_DELAY")
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=float(delay) if delay else None)
    provider.add_span_processor(processor)
    return provider.get_tracer("kubechat", __version__), provider.shutdown


def traces_endpoint(env: Mapping[str, str]) -> str:
    """The signal-specific endpoint as given, or the base endpoint with ``/v1/traces`` (as the spec says)."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if specific:
        return specific
    return env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"

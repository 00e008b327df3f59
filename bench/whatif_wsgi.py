"""deskbridge with the what-if patches named by BENCH_WHAT_IF applied (`bench.whatif_wsgi:app`)."""

from bench.whatif import apply_from_env

apply_from_env()

from app import create_app  # noqa: E402  (after the patches, which wrap what create_app uses)

app = create_app()

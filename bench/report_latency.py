"""GET /v1/batches/{id}/report: the first request (four matplotlib figures drawn) against the ones after it
(served from the page cache), in process through the ASGI app, on the embedded SQLite store.

    PYTHONPATH=. python bench/report_latency.py [--models 3] [--repeat 20]

A batch of ``--models`` vision × ``--models`` language models is stored with planted, schema-valid results
(tests/helpers/results.py), so the report has every figure to draw. It prints the wall time of the first GET, the
median and p99 of ``--repeat`` more GETs, their ratio, the cost of drawing the page without the cache
(phasecore.presentation.report.inline_html), and a 304 answer to If-None-Match.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from phasecore.presentation.report import inline_html
    from service.app import create_app
    from service.batch_schemas import BatchRequest
    from service.batches import batch_results, create_batch, get_batch
    from service.settings import ApiSettings
    from store.models import SUCCEEDED, Screening
    from tests.helpers.results import full_result

    home = tempfile.mkdtemp(prefix="bench-report-")
    app = create_app(ApiSettings(home=home, rate_limit_per_minute=0))
    vision = [f"hf:org/vision-{i}" for i in range(args.models)]
    language = [f"hf:org/language-{j}" for j in range(args.models)]
    with TestClient(app) as client:
        runtime = app.state.runtime
        with runtime.session() as session:  # stored directly (nothing queued), every pair planted as succeeded
            request = BatchRequest(vision=vision, language=language, dataset="digits", options={"n": 64})
            stored = create_batch(session, request, settings=app.state.settings)
            for screening in session.scalars(select(Screening)):
                screening.state, screening.progress = SUCCEEDED, 1.0
                screening.result = full_result(metrics={"s_ntk_cross_centered": 0.01 * len(screening.id) % 0.3})
            session.commit()
            batch = {"id": stored.id}
            document = batch_results(session, get_batch(session, stored.id))
        url = f"/v1/batches/{batch['id']}/report"
        started = time.perf_counter()
        first = client.get(url)
        first_s = time.perf_counter() - started
        assert first.status_code == 200, first.text
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            assert client.get(url).status_code == 200
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        unchanged = client.get(url, headers={"If-None-Match": first.headers["etag"]})
        not_modified_s = time.perf_counter() - started
        started = time.perf_counter()
        inline_html(document)
        draw_s = time.perf_counter() - started
    times.sort()
    median, p99 = statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"batch {args.models}x{args.models}, page {len(first.content) / 1024:.0f} KiB")
    print(f"first GET (draws): {first_s * 1000:.0f} ms; drawing alone (inline_html): {draw_s * 1000:.0f} ms")
    print(f"cached GET: median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {args.repeat}")
    print(f"ratio first / cached median: {first_s / median:.0f}x")
    print(f"If-None-Match: {unchanged.status_code} in {not_modified_s * 1000:.1f} ms")
    print(f"pages drawn: {app.state.report_cache.renders}")


if __name__ == "__main__":
    main()

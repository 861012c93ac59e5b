"""Python client of the phasescreen HTTP API: typed (the API's own pydantic models), httpx-based, synchronous.

    from service.client import PhasescreenClient

    with PhasescreenClient("http://screening.internal:8000", api_key="...") as client:
        screening = client.submit_screening("pkg:efficientnet-lite0", "pkg:all-minilm-l6-v2", "digits")
        done = client.wait_for_screening(screening.id, timeout=3600)
        print(done.result.predictions["combined_rule"])

Every call retries when the server answers 503 (busy, database unavailable) or 429 (rate limited), waiting what
its ``Retry-After`` header says (capped by ``max_retry_wait``), and when the connection cannot be opened. Other
errors raise :class:`ApiError` carrying the RFC 9457 problem document; an unreachable server raises
:class:`ServerUnreachable`, a wait past its deadline :class:`WaitTimeout`. Screening submissions carry an
``Idempotency-Key``, so a retried submission never makes two screenings, and so do outcome reports.

After training the pair, a pipeline reports what the run reached; the study then scores the rules against it:

        client.report_outcome(screening.id, metric="zero_shot_top1", value=0.41, success_threshold=0.3,
                              success_direction="above", dataset="imagenet-1k:val", method="lit")
        client.study().reported    # the same figures on reported labels, beside the proxy's
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import httpx

from phasecore.study.report_schema import StudyOut
from service.batch_schemas import BatchOut, BatchRequest
from service.outcome_schemas import OutcomeOut, OutcomePage, OutcomeRequest
from service.schemas import ScreeningOut, ScreeningRequest

#: what the client polls: a screening or a batch (both have a state and a progress)
Polled = TypeVar("Polled", ScreeningOut, BatchOut)

ACTIVE = ("queued", "running")
RETRY_STATUSES = (429, 503)


class ApiError(Exception):
    """The server refused or failed a request; ``problem`` is its problem document (or a stand-in)."""

    def __init__(self, message: str, *, status: int | None = None, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = dict(problem or {})

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        detail = problem.get("detail") or response.text[:300] or response.reason_phrase
        title = problem.get("title") or response.reason_phrase
        return cls(f"{response.status_code} {title}: {detail}", status=response.status_code, problem=problem)


class ServerUnreachable(ApiError):
    """No connection to the server (refused, DNS, TLS, or no answer in time)."""


class WaitTimeout(ApiError):
    """A screening or batch was still queued or running when the caller's deadline passed."""


def retry_after_seconds(value: str | None, *, default: float) -> float:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; ``default`` when absent or bad."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class PhasescreenClient:
    """One server. ``http`` lets a caller pass its own ``httpx.Client`` (tests pass the app's TestClient)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_retry_wait: float = 120.0,
        connect_retries: int = 2,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        if http is not None and api_key:
            self._http.headers.update(headers)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.connect_retries = connect_retries
        self._sleep = sleep

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> PhasescreenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying on 503 / 429 (honouring Retry-After) and on connection failures."""
        refused, attempt = 0, 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if refused < self.connect_retries:
                    refused += 1
                    self._sleep(0.5 * refused)
                    continue
                raise ServerUnreachable(f"cannot reach the phasescreen server at {self.base_url}: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise ServerUnreachable(
                    f"the phasescreen server at {self.base_url} did not answer {method} {path} in time: {exc}"
                ) from exc
            except httpx.TransportError as exc:
                raise ServerUnreachable(f"{method} {path} to {self.base_url} failed: {exc}") from exc
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                wait = retry_after_seconds(response.headers.get("retry-after"), default=min(2.0**attempt, 30.0))
                attempt += 1
                self._sleep(min(wait, self.max_retry_wait))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response

    def _get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    # --- screenings ---------------------------------------------------------------------------------------

    def submit_screening(
        self,
        vision: str,
        language: str,
        dataset: str,
        options: Mapping[str, Any] | None = None,
        *,
        reuse: bool | None = None,
        idempotency_key: str | None = None,
    ) -> ScreeningOut:
        """POST /v1/screenings (validated here first, so a malformed request fails before any traffic)."""
        body = ScreeningRequest.model_validate(
            {"vision": vision, "language": language, "dataset": dataset, "options": dict(options or {}), "reuse": reuse}
        )
        response = self.request(
            "POST",
            "/v1/screenings",
            json=body.model_dump(mode="json", exclude_none=True),
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        )
        return ScreeningOut.model_validate(response.json())

    def get_screening(self, screening_id: str) -> ScreeningOut:
        return ScreeningOut.model_validate(self._get_json(f"/v1/screenings/{screening_id}"))

    def wait_for_screening(
        self, screening_id: str, *, timeout: float, on_progress: Callable[[ScreeningOut], None] | None = None
    ) -> ScreeningOut:
        """Poll until the screening is succeeded, failed or cancelled; raises WaitTimeout after ``timeout`` s."""
        return self._wait(
            lambda: self._poll(f"/v1/screenings/{screening_id}", ScreeningOut),
            timeout=timeout,
            what=f"screening {screening_id}",
            on_progress=on_progress,
        )

    # --- batches ------------------------------------------------------------------------------------------

    def submit_batch(self, request: BatchRequest | Mapping[str, Any]) -> BatchOut:
        """POST /v1/batches: every (vision, language) pair of the request."""
        body = request if isinstance(request, BatchRequest) else BatchRequest.model_validate(dict(request))
        response = self.request("POST", "/v1/batches", json=body.model_dump(mode="json", exclude_none=True))
        return BatchOut.model_validate(response.json())

    def get_batch(self, batch_id: str) -> BatchOut:
        return BatchOut.model_validate(self._get_json(f"/v1/batches/{batch_id}"))

    def wait_for_batch(
        self, batch_id: str, *, timeout: float, on_progress: Callable[[BatchOut], None] | None = None
    ) -> BatchOut:
        """Poll until no pair of the batch is queued or running; raises WaitTimeout after ``timeout`` s."""
        return self._wait(
            lambda: self._poll(f"/v1/batches/{batch_id}", BatchOut),
            timeout=timeout,
            what=f"batch {batch_id}",
            on_progress=on_progress,
        )

    def batch_results(self, batch_id: str) -> dict[str, Any]:
        """The batch document (``phasecore.screening.batch``): every pair with its full result."""
        return cast("dict[str, Any]", self._get_json(f"/v1/batches/{batch_id}/results.json"))  # a JSON object

    def batch_results_csv(self, batch_id: str) -> str:
        return self.request("GET", f"/v1/batches/{batch_id}/results.csv").text

    def batch_report(self, batch_id: str) -> str:
        """The self-contained HTML report of a batch."""
        return self.request("GET", f"/v1/batches/{batch_id}/report").text

    # --- outcomes -----------------------------------------------------------------------------------------

    def report_outcome(
        self,
        screening_id: str,
        *,
        metric: str,
        value: float,
        success_threshold: float,
        success_direction: str,
        dataset: str,
        examples: int | None = None,
        steps: int | None = None,
        method: str | None = None,
        run_url: str | None = None,
        notes: str | None = None,
        idempotency_key: str | None = None,
    ) -> OutcomeOut:
        """POST /v1/screenings/{id}/outcomes: what a training run of the screened pair achieved, and whether that
        is a success by ``success_threshold`` (``success_direction`` "above": value ≥ threshold; "below": value ≤
        threshold). Validated here first; one Idempotency-Key per call (pass your own to make a retried job's
        report a replay rather than a second run)."""
        body = OutcomeRequest.model_validate(
            {
                "metric": metric,
                "value": value,
                "success_threshold": success_threshold,
                "success_direction": success_direction,
                "dataset": dataset,
                "examples": examples,
                "steps": steps,
                "method": method,
                "run_url": run_url,
                "notes": notes,
            }
        )
        response = self.request(
            "POST",
            f"/v1/screenings/{screening_id}/outcomes",
            json=body.model_dump(mode="json", exclude_none=True),
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        )
        return OutcomeOut.model_validate(response.json())

    def outcomes(self, screening_id: str) -> list[OutcomeOut]:
        """GET /v1/screenings/{id}/outcomes, every page: the screening's reported runs, newest first."""
        items: list[OutcomeOut] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = OutcomePage.model_validate(self._get_json(f"/v1/screenings/{screening_id}/outcomes", params=params))
            items.extend(page.items)
            if page.next_cursor is None:
                return items
            params["cursor"] = page.next_cursor

    # --- study --------------------------------------------------------------------------------------------

    def study(self, dataset: str | None = None) -> StudyOut:
        """GET /v1/study: prediction quality over every stored pair with ground truth (METRICS §8), on the
        screenings' own outcome and, in ``reported``, on the outcomes training runs reported."""
        params = {"dataset": dataset} if dataset else None
        return StudyOut.model_validate(self._get_json("/v1/study", params=params))

    # --- polling ------------------------------------------------------------------------------------------

    def _poll(self, path: str, model: type[Polled]) -> tuple[Polled, float]:
        response = self.request("GET", path)
        return model.model_validate(response.json()), retry_after_seconds(
            response.headers.get("retry-after"), default=2.0
        )

    def _wait(
        self,
        poll: Callable[[], tuple[Polled, float]],
        *,
        timeout: float,
        what: str,
        on_progress: Callable[[Polled], None] | None,
    ) -> Polled:
        deadline = time.monotonic() + timeout
        while True:
            item, wait = poll()
            if on_progress:
                on_progress(item)
            if item.state not in ACTIVE:
                return item
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"timed out after {timeout:g} s: {what} is still {item.state} "
                    f"({item.progress:.0%} done); it goes on on the server"
                )
            self._sleep(max(0.2, min(wait, left)))

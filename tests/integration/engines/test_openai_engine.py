"""The openai engine against a local server speaking the OpenAI Images API."""

from __future__ import annotations

import threading
import time

import pytest

from imagegen.engines import EngineError, Failure, GenerationCanceled, Run
from imagegen.engines.openai import OpenAIEngine, OpenAISettings
from tests.integration.engines import openai_server as api
from tests.integration.engines.images import png, size_of
from tests.integration.engines.protocol import Reply, closed_port
from tests.unit.engines.fakes import REQUEST

KEY = "sk-test-0123456789abcdef"
ENV = {"IMAGE_API_KEY": KEY}


@pytest.fixture
def server():
    with api.OpenAIServer(key=KEY) as running:
        yield running


def engine(url: str, **settings: object) -> OpenAIEngine:
    options = {"base_url": f"{url}/v1", "model": "dall-e-2", "api_key_env": "IMAGE_API_KEY", **settings}
    return OpenAIEngine(OpenAISettings(**options), ENV)  # type: ignore[arg-type]


def failure(call) -> EngineError:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError) as caught:
        call()
    return caught.value


def test_b64_json_answers_give_the_image_and_the_request_follows_the_protocol(server) -> None:
    image = engine(server.url).generate(REQUEST, Run(10))
    assert size_of(image) == (512, 512)
    assert server.bodies == [
        {
            "prompt": "a lighthouse, watercolor style, pastel colors",
            "n": 1,
            "size": "512x512",
            "model": "dall-e-2",
            "response_format": "b64_json",
        }
    ]


def test_url_answers_are_downloaded_without_the_key(server) -> None:
    image = engine(server.url, response_format="url").generate(REQUEST, Run(10))
    assert size_of(image) == (512, 512)
    download = [e for e in server.exchanges if e.path.startswith("/files/")]
    assert len(download) == 1 and "authorization" not in download[0].headers


def test_the_size_map_and_extra_fields_reach_the_api(server) -> None:
    settings = {
        "model": "dall-e-3",
        "size_map": {"512x512": "1024x1024"},
        "resize": True,
        "extra": {"quality": "hd"},
    }
    image = engine(server.url, **settings).generate(REQUEST, Run(10))
    assert size_of(image) == (1024, 1024)  # the router's output check resizes it (tested there)
    assert server.bodies[0]["size"] == "1024x1024" and server.bodies[0]["quality"] == "hd"


def test_a_429_is_transient_with_its_retry_after_in_seconds_or_milliseconds(server) -> None:
    server.then(api.rate_limited(retry_after="3"), api.rate_limited(retry_after="20", retry_after_ms="1500"))
    first = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert first.failure is Failure.TRANSIENT and first.retry_after == 3.0
    assert first.message == "the image API server answered 429: Rate limit reached for images per minute."
    second = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert second.retry_after == 1.5  # retry-after-ms is the more precise of the two


def test_a_429_for_an_exhausted_quota_is_this_deployments_failure(server) -> None:
    server.then(api.quota_exhausted())
    assert failure(lambda: engine(server.url).generate(REQUEST, Run(10))).failure is Failure.DEPLOYMENT


def test_a_5xx_is_transient(server) -> None:
    server.then(api.server_error(), Reply(502, b"<html>Bad gateway</html>", {"content-type": "text/html"}))
    assert failure(lambda: engine(server.url).generate(REQUEST, Run(10))).transient
    gateway = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert gateway.transient and gateway.message == "the image API server answered 502"


def test_a_content_policy_refusal_is_permanent_with_the_apis_message(server) -> None:
    server.then(api.refusal())
    refused = failure(lambda: engine(server.url).generate(REQUEST, Run(10)))
    assert refused.failure is Failure.PERMANENT
    assert (
        refused.message
        == "the prompt was refused: Your request was rejected as a result of our safety system."
    )


def test_a_bad_request_from_the_deployments_settings_is_its_failure(server) -> None:
    bad = failure(lambda: engine(server.url, model="dall-e-3").generate(REQUEST, Run(10)))
    assert bad.failure is Failure.DEPLOYMENT
    assert "'512x512' is not one of [1024x1024, 1024x1792, 1792x1024]" in bad.message


def test_a_wrong_key_fails_the_deployment_and_the_key_never_reaches_the_message(server) -> None:
    wrong = {"IMAGE_API_KEY": "sk-wrong-key-99999999"}
    settings = OpenAISettings(base_url=f"{server.url}/v1", api_key_env="IMAGE_API_KEY")
    rejected = failure(lambda: OpenAIEngine(settings, wrong).generate(REQUEST, Run(10)))
    assert rejected.failure is Failure.DEPLOYMENT
    assert "sk-wrong" not in rejected.message and "[redacted]" in rejected.message


def test_a_missing_key_variable_fails_the_deployment_by_its_name() -> None:
    settings = OpenAISettings(api_key_env="NOT_SET_ANYWHERE")
    missing = failure(lambda: OpenAIEngine(settings, {}))
    assert missing.message == "the environment variable NOT_SET_ANYWHERE is not set on this worker"


def test_answers_without_an_image_or_with_something_else_are_refused(server) -> None:
    server.then(Reply.json({"created": 1, "data": []}), Reply(200, b"not json"), api.b64(b"GIF89a nonsense"))
    assert failure(lambda: engine(server.url).generate(REQUEST, Run(10))).message == (
        "the image API's answer has no image in it"
    )
    assert failure(lambda: engine(server.url).generate(REQUEST, Run(10))).failure is Failure.DEPLOYMENT
    # Bytes that are not an image come back as they are: the router's output check refuses them.
    assert engine(server.url).generate(REQUEST, Run(10)) == b"GIF89a nonsense"


def test_a_server_that_does_not_answer_in_time_is_a_transient_timeout(server) -> None:
    server.then(Reply.json({}, delay=5))
    started = time.monotonic()
    late = failure(lambda: engine(server.url).generate(REQUEST, Run(0.5)))
    assert late.transient and time.monotonic() - started < 3


def test_an_image_sent_too_slowly_is_given_up_at_the_deadline(server) -> None:
    body = png(512, 512, "red") + bytes(20_000)
    server.file_replies["slow.png"] = Reply(200, body, {"content-type": "image/png"}, drip=0.1)
    server.then(Reply.json({"created": 1, "data": [{"url": f"{server.url}/files/slow.png"}]}))
    started = time.monotonic()
    dripped = failure(lambda: engine(server.url, response_format="url").generate(REQUEST, Run(1)))
    assert dripped.transient and "too slowly" in dripped.message and time.monotonic() - started < 1.8


def test_an_image_larger_than_the_limit_is_refused(server) -> None:
    server.files["big.png"] = png(512, 512) + bytes(4000)
    server.then(Reply.json({"created": 1, "data": [{"url": f"{server.url}/files/big.png"}]}))
    limited = failure(
        lambda: engine(server.url, response_format="url", max_image_bytes=2048).generate(REQUEST, Run(5))
    )
    assert limited.failure is Failure.DEPLOYMENT and "larger than 2048 bytes" in limited.message


def test_a_refused_connection_is_transient_and_names_no_address() -> None:
    refused = failure(lambda: engine(closed_port()).generate(REQUEST, Run(5)))
    assert refused.transient and refused.message == "could not connect to the image API server"


def test_a_cancel_returns_at_once_while_the_api_is_still_working(server) -> None:
    server.then(Reply.json({}, delay=5))
    run = Run(30)
    threading.Timer(0.2, run.cancel).start()
    started = time.monotonic()
    with pytest.raises(GenerationCanceled):
        engine(server.url).generate(REQUEST, run)
    assert time.monotonic() - started < 2

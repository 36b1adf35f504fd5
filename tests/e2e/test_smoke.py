from __future__ import annotations

from tests.support import GENERATION, ServerFactory


def test_the_case_study_flow_works_against_a_real_server(servers: ServerFactory) -> None:
    server = servers.start()
    key = server.keys()["testUser1"]
    with server.client(key) as client:
        created = client.post("/demo-case-study/us-central1/createGenerationRequest", json=GENERATION)
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["status"] == "completed" and body["deductedCredits"] == 1
        credits = client.get("/getUserCredits", params={"userId": "testUser1"}).json()
        assert credits["currentCredits"] == 99
        image = client.get(body["imageUrl"])
        assert image.headers["content-type"] == "image/png"

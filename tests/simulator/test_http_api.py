"""HTTP routes of the simulator: /view, empty and 500 answers, history paging, introspection, /api, Origin."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import pytest
import requests
import websocket

from workers_app.simulator import SimulatorHandle

from .recorder import Recorder
from .traces import load_json
from .workflows import CKPT, noise_workflow, run, sd15_workflow, submit, wait_history

SERVER_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


@pytest.fixture
def saved(simulator: SimulatorHandle) -> dict[str, str]:
    """One image saved as probe/basic_00001_.png."""
    entry = run(simulator.url, noise_workflow("probe/basic"))
    (image,) = entry["outputs"]["3"]["images"]
    assert image == {"filename": "basic_00001_.png", "subfolder": "probe", "type": "output"}
    return image


def test_view_returns_the_png_with_its_headers(simulator: SimulatorHandle, saved: dict[str, str]) -> None:
    response = requests.get(f"{simulator.url}/view", params=saved, timeout=10)
    assert response.status_code == HTTPStatus.OK
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == 'filename="basic_00001_.png"'
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    on_disk = simulator.call(
        lambda sim: (sim.root_dir / "output" / "probe" / "basic_00001_.png").read_bytes()
    )
    assert response.content == on_disk


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "basic_00001_.png", "subfolder": "probe"}, HTTPStatus.OK),  # type defaults to output
        ({"filename": "basic_00001_.png [output]", "subfolder": "probe", "type": "temp"}, HTTPStatus.OK),
        ({"filename": "missing_00001_.png", "subfolder": "probe", "type": "output"}, HTTPStatus.NOT_FOUND),
        ({"filename": "basic_00001_.png", "subfolder": "other", "type": "output"}, HTTPStatus.NOT_FOUND),
        ({"filename": "probe/basic_00001_.png", "type": "output"}, HTTPStatus.NOT_FOUND),
        ({"subfolder": "probe", "type": "output"}, HTTPStatus.NOT_FOUND),
        ({"filename": "basic_00001_.png", "subfolder": "probe", "type": "models"}, HTTPStatus.BAD_REQUEST),
        ({"filename": "../basic_00001_.png", "subfolder": "probe", "type": "output"}, HTTPStatus.BAD_REQUEST),
        ({"filename": "/etc/passwd", "type": "output"}, HTTPStatus.BAD_REQUEST),
        ({"filename": "passwd", "subfolder": "../../../etc", "type": "output"}, HTTPStatus.FORBIDDEN),
    ],
)
def test_view_status_codes(
    simulator: SimulatorHandle, saved: dict[str, str], params: dict[str, str], status: HTTPStatus
) -> None:
    response = requests.get(f"{simulator.url}/view", params=params, timeout=10)
    assert response.status_code == status
    if status != HTTPStatus.OK:
        assert response.content == b""


def test_view_can_reencode_a_preview(simulator: SimulatorHandle, saved: dict[str, str]) -> None:
    response = requests.get(f"{simulator.url}/view", params={**saved, "preview": "jpeg;80"}, timeout=10)
    assert response.status_code == HTTPStatus.OK
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.content.startswith(b"\xff\xd8")


def test_empty_answers_have_no_content_type(simulator: SimulatorHandle) -> None:
    for path, body in [
        ("/queue", {"clear": True}),
        ("/interrupt", None),
        ("/history", {"clear": True}),
        ("/free", {}),
    ]:
        response = requests.post(f"{simulator.url}{path}", json=body, timeout=10)
        assert response.status_code == HTTPStatus.OK, path
        assert response.content == b"", path
        assert "Content-Type" not in response.headers, path


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("POST", "/prompt", b'{"prompt": {"1": '),
        ("POST", "/prompt", b'{"prompt": [1, 2, 3]}'),
        ("GET", "/history?max_items=abc", None),
        ("GET", "/history?offset=x", None),
    ],
)
def test_unhandled_failures_give_the_500_text_page(
    simulator: SimulatorHandle, method: str, path: str, data: bytes | None
) -> None:
    response = requests.request(method, f"{simulator.url}{path}", data=data, timeout=10)
    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == SERVER_ERROR_TEXT


def test_history_paging_delete_and_clear(simulator: SimulatorHandle) -> None:
    ids = [run(simulator.url, noise_workflow(f"h/{i}"))["prompt"][1] for i in range(3)]

    def history(query: str = "") -> list[str]:
        return list(requests.get(f"{simulator.url}/history{query}", timeout=10).json())

    assert history() == ids
    assert history("?max_items=2") == ids[1:]
    assert history("?max_items=1&offset=1") == ids[1:2]
    assert history("?offset=2") == ids[2:]
    assert requests.get(f"{simulator.url}/history/unknown-id", timeout=10).json() == {}
    requests.post(f"{simulator.url}/history", json={"delete": [ids[0], "unknown"]}, timeout=10)
    assert history() == ids[1:]
    requests.post(f"{simulator.url}/history", json={"clear": True}, timeout=10)
    assert history() == []


def test_history_entry_has_the_documented_shape(simulator: SimulatorHandle) -> None:
    workflow = noise_workflow("shape/x")
    answer = submit(simulator.url, workflow, client_id="c1", extra_data={"extra_pnginfo": {"a": 1}})
    entry = wait_history(simulator.url, answer["prompt_id"])
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert entry["prompt"] == [
        answer["number"],
        answer["prompt_id"],
        workflow,
        {"extra_pnginfo": {"a": 1}, "client_id": "c1"},
        ["3"],
    ]
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    assert [name for name, _ in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["meta"] == {
        "3": {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}
    }


def test_introspection_routes(make_simulator: Callable[..., SimulatorHandle]) -> None:
    sim = make_simulator(checkpoints=(CKPT, "other.safetensors"))
    object_info = requests.get(f"{sim.url}/object_info", timeout=10).json()
    assert set(object_info) == {
        *load_json("object_info_subset.json"),
        "LoraLoader",
        "LoadImage",
        "ImageInvert",
    }
    loaders = load_json("object_info_loaders.json")
    for name in ("LoraLoader", "ImageInvert"):  # as captured, but for the (empty) choices
        assert object_info[name] == loaders[name]
    load_image = loaders["LoadImage"]
    load_image["input"]["required"]["image"][0] = []  # the input folder is empty
    assert object_info["LoadImage"] == load_image
    ckpt_input = object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    assert ckpt_input[0] == [CKPT, "other.safetensors"]
    one = requests.get(f"{sim.url}/object_info/KSampler", timeout=10).json()
    assert one == {"KSampler": object_info["KSampler"]}
    assert requests.get(f"{sim.url}/object_info/NoSuchNode", timeout=10).json() == {}
    assert requests.get(f"{sim.url}/features", timeout=10).json() == {
        "supports_preview_metadata": True,
        "max_upload_size": 104857600,
    }
    assert requests.get(f"{sim.url}/models/checkpoints", timeout=10).json() == [CKPT, "other.safetensors"]
    assert "checkpoints" in requests.get(f"{sim.url}/models", timeout=10).json()
    assert requests.get(f"{sim.url}/models/nope", timeout=10).status_code == HTTPStatus.NOT_FOUND
    assert requests.get(f"{sim.url}/embeddings", timeout=10).json() == []
    assert requests.get(f"{sim.url}/prompt", timeout=10).json() == {"exec_info": {"queue_remaining": 0}}


def test_system_stats_has_the_real_shape_and_says_simulator(simulator: SimulatorHandle) -> None:
    stats = requests.get(f"{simulator.url}/system_stats", timeout=10).json()
    real = load_json("system_stats.json")
    assert stats.keys() == real.keys()
    assert stats["system"].keys() == real["system"].keys()
    assert stats["devices"][0].keys() == real["devices"][0].keys()
    assert stats["system"]["comfyui_version"] == "0.3.64-simulator"
    assert "Simulated GPU" in stats["devices"][0]["name"]
    assert stats["devices"][0]["vram_total"] >= stats["devices"][0]["vram_free"] > 0


def test_every_route_is_also_under_api(simulator: SimulatorHandle, recorder: Recorder) -> None:
    recorder.connect("ws1", client_id="api-client")  # /ws
    ws = websocket.create_connection(
        f"{simulator.ws_url.replace('/ws', '/api/ws')}?clientId=api2", timeout=10
    )
    try:
        assert '"sid": "api2"' in ws.recv()
    finally:
        ws.close()
    answer = requests.post(
        f"{simulator.url}/api/prompt",
        json={"prompt": noise_workflow("api/x"), "client_id": "api-client"},
        timeout=10,
    ).json()
    recorder.wait_event("executing", node=None, prompt_id=answer["prompt_id"])
    entry = requests.get(f"{simulator.url}/api/history/{answer['prompt_id']}", timeout=10).json()
    (image,) = entry[answer["prompt_id"]]["outputs"]["3"]["images"]
    assert requests.get(f"{simulator.url}/api/view", params=image, timeout=10).status_code == HTTPStatus.OK
    assert requests.get(f"{simulator.url}/api/queue", timeout=10).json() == {
        "queue_running": [],
        "queue_pending": [],
    }


def test_origin_must_match_a_loopback_host(simulator: SimulatorHandle) -> None:
    bad = requests.get(f"{simulator.url}/system_stats", headers={"Origin": "http://evil.example"}, timeout=10)
    assert bad.status_code == HTTPStatus.FORBIDDEN
    assert bad.content == b""
    good = requests.get(f"{simulator.url}/system_stats", headers={"Origin": simulator.url}, timeout=10)
    assert good.status_code == HTTPStatus.OK
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(simulator.ws_url, origin="http://evil.example", timeout=10)
    assert refused.value.status_code == HTTPStatus.FORBIDDEN


def test_inputs_are_converted_and_undeclared_ones_ignored(simulator: SimulatorHandle) -> None:
    workflow = noise_workflow("conv/x")
    workflow["1"]["inputs"].update(width="96", unknown_input="ignored")
    entry = run(simulator.url, workflow)
    assert entry["prompt"][2]["1"]["inputs"]["width"] == 96
    assert entry["status"]["status_str"] == "success"


def test_partial_execution_targets_run_only_those_outputs(simulator: SimulatorHandle) -> None:
    workflow = noise_workflow("partial/a")
    workflow["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "partial/b"},
    }
    entry = run(simulator.url, workflow, partial_execution_targets=["4"])
    assert entry["prompt"][4] == ["4"]
    assert list(entry["outputs"]) == ["4"]


def test_checkpoint_must_be_one_of_the_simulated_ones(make_simulator: Callable[..., SimulatorHandle]) -> None:
    sim = make_simulator(checkpoints=(CKPT,))
    response = requests.post(
        f"{sim.url}/prompt", json={"prompt": sd15_workflow(ckpt="nope.ckpt")}, timeout=10
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST
    (error,) = response.json()["node_errors"]["4"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == f"ckpt_name: 'nope.ckpt' not in ['{CKPT}']"
    assert error["extra_info"]["input_config"][0] == [CKPT]

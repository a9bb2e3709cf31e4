"""The simulator's aiohttp application: ComfyUI's HTTP routes and WebSocket, plus `/simulator/*` controls.

Every route is also served under `/api`. Answers copy the real server, including its quirks: a malformed
body gives aiohttp's 500 text page; empty 200 answers carry no Content-Type; `GET /history/{unknown}` is
200 `{}`. `GET|POST /simulator/faults` and `POST /simulator/restart` exist only in the simulator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import mimetypes
import os
import platform
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path

from aiohttp import WSMsgType, web
from PIL import Image

from .config import SimulatorConfig
from .engine import SENSITIVE_EXTRA_DATA_KEYS, SERVER_FEATURES, Simulator, SocketEntry, log
from .nodes import SIMULATOR_VERSION, input_files
from .validation import validate_prompt

SIMULATOR_KEY = web.AppKey("comfyui_simulator", Simulator)
SERVER_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
MODEL_FOLDERS = (
    "checkpoints",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
)
GIB = 1024**3
INLINE_READ_BYTES = 4 * 1024 * 1024  # /view reads files up to this size on the event loop
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The real server's CSRF guard: Origin and Host must match when Host is a loopback name (else 403)."""
    if (
        request.app[SIMULATOR_KEY].config.check_origin
        and "Host" in request.headers
        and "Origin" in request.headers
    ):
        host_domain = request.headers["Host"].lower()
        parsed = urllib.parse.urlparse(request.headers["Origin"])
        origin_domain: str | None = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = _is_loopback(host_parsed.hostname)
        compared_host: str | None = host_domain
        if parsed.port is None:
            compared_host = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and compared_host and origin_domain and compared_host != origin_domain:
            log(
                "request with non matching host and origin %s != %s, returning 403",
                compared_host,
                origin_domain,
            )
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 32 * GIB, 16 * GIB


class Routes:
    """Request handlers bound to one Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def register(self, app: web.Application) -> None:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/", self.index),
            ("GET", "/ws", self.websocket),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_prompt),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_class),
            ("GET", "/features", self.features),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_folder),
            ("GET", "/embeddings", self.embeddings),
            ("POST", "/free", self.free),
            ("GET", "/simulator/faults", self.get_faults),
            ("POST", "/simulator/faults", self.post_faults),
            ("POST", "/simulator/restart", self.post_restart),
            ("GET", "/simulator/stats", self.get_stats),
        ]
        for method, path, handler in table:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path if path != "/" else "/api/", handler)

    # --- WebSocket ------------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """First frame `status` with `sid`; a newer socket with the same clientId takes over the
        registration, and when the older one closes the registration is deleted (quirk 4.7)."""
        sim = self.sim
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            sim.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        sim.sockets[sid] = SocketEntry(ws, request.transport)
        generation = sim.generation
        try:
            await sim.send("status", {"status": sim.queue_info(), "sid": sid}, sid)
            if sim.client_id == sid and sim.last_node_id is not None:
                await sim.send("executing", {"node": sim.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    log("invalid JSON received from socket %s", sid)
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    entry = sim.sockets.get(sid)
                    if entry is not None:
                        entry.feature_flags = data.get("data", {}) or {}
                    await sim.send("feature_flags", dict(SERVER_FEATURES), sid)
                first_message = False
        finally:
            if generation == sim.generation:
                sim.sockets.pop(sid, None)
        return ws

    # --- prompts and queue ----------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        received = time.time()
        sim = self.sim
        json_data = await request.json()  # malformed JSON: aiohttp's 500 text page, no number used
        if "number" in json_data:
            number: float = float(json_data["number"])
        else:
            number = sim.number
            if json_data.get("front"):
                number = -number
            sim.number += 1
        if "prompt" not in json_data:
            log("prompt rejected: no_prompt")
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial = json_data.get("partial_execution_targets", None)
        result = validate_prompt(prompt, sim.object_info, partial, sim.dirs)
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not result.ok:
            assert result.error is not None
            log("prompt %s rejected: %s (%s)", prompt_id, result.error["type"], result.error["message"])
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        sim.note_received(prompt_id, received, prompt)
        await sim.put((number, prompt_id, prompt, extra_data, result.outputs, sensitive))
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.queue_info())

    async def get_queue(self, request: web.Request) -> web.Response:
        sim = self.sim
        return web.json_response(
            {
                "queue_running": [list(item[:5]) for item in sim.currently_running.values()],
                "queue_pending": [list(item[:5]) for item in sim.queue],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            log("queue cleared (%d pending)", len(self.sim.queue))
            await self.sim.wipe_queue()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                await self.sim.delete_queue_item(lambda item, target=id_to_delete: item[1] == target)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        self.sim.interrupt(json_data.get("prompt_id"))
        return web.Response(status=200)

    # --- history --------------------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None  # non-int: 500 text
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.sim.get_history(max_items=max_items, offset=offset))

    async def get_history_prompt(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.sim.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.sim.history.clear()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                self.sim.history.pop(id_to_delete, None)
        return web.Response(status=200)

    # --- files ----------------------------------------------------------------------------------------

    async def view(self, request: web.Request) -> web.Response:
        """Files by {filename, subfolder, type}: 404 missing, 400 bad type or path, 403 subfolder escape."""
        sim = self.sim
        if sim.config.view_delay > 0:
            await asyncio.sleep(sim.config.view_delay)
        if sim.config.view_fail_rate > 0 and sim.rng.random() < sim.config.view_fail_rate:
            log("fault: /view answers 500")
            return web.Response(status=500, text=SERVER_ERROR_TEXT)
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, output_dir = self._annotated_filepath(query["filename"])
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if output_dir is None:
            output_dir = sim.dirs.get(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        path = Path(output_dir, filename)
        if not path.is_file():
            return web.Response(status=404)
        if path.stat().st_size <= INLINE_READ_BYTES:
            data = path.read_bytes()  # a page-cache read: cheaper than a trip to the thread pool
        else:
            data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        headers = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query or query.get("channel") in ("rgb", "a"):
            body, content_type = self._convert(data, query.get("preview"), query.get("channel", ""))
            return web.Response(body=body, content_type=content_type, headers=headers)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            content_type = "application/octet-stream"
        return web.Response(body=data, headers={**headers, "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.Response:
        """server.py image_upload: multipart `image`, `type` (input by default), `subfolder`, `overwrite`. A
        name that leaves the folder is an empty 400; an identical file under the same name keeps its name;
        other bytes become `name (1).ext` unless `overwrite` is "true" or "1"."""
        post = await request.post()
        image = post.get("image")
        kind = str(post.get("type") or "input")
        upload_dir = self.sim.dirs.get(kind)
        if upload_dir is None or not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        full_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_folder, image.filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        data = image.file.read()
        os.makedirs(full_folder, exist_ok=True)
        filename, stem_ext = image.filename, os.path.splitext(image.filename)
        overwrite = str(post.get("overwrite", "")) in ("true", "1")
        duplicate = False
        if not overwrite:
            i = 1
            while os.path.exists(filepath):
                if Path(filepath).read_bytes() == data:
                    duplicate = True
                    break
                filename = f"{stem_ext[0]} ({i}){stem_ext[1]}"
                filepath = os.path.join(full_folder, filename)
                i += 1
        if not duplicate:
            Path(filepath).write_bytes(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    def _list_input_files(self) -> None:
        """LoadImage lists the input folder's images each time /object_info is asked (INPUT_TYPES)."""
        spec = self.sim.object_info.get("LoadImage", {}).get("input", {}).get("required", {}).get("image")
        if spec:
            spec[0] = input_files(self.sim.dirs["input"])

    def _annotated_filepath(self, name: str) -> tuple[str, str | None]:
        for kind in ("output", "input", "temp"):
            suffix = f" [{kind}]"
            if name.endswith(suffix):
                return name[: -len(suffix)], self.sim.dirs[kind]
        return name, None

    @staticmethod
    def _convert(data: bytes, preview: str | None, channel: str) -> tuple[bytes, str]:
        """`preview=webp;Q|jpeg;Q` re-encodes; `channel=rgb` drops alpha; `channel=a` keeps only alpha."""
        with Image.open(BytesIO(data)) as source:
            image = source.copy()
        buffer = BytesIO()
        if preview is not None:
            info = preview.split(";")
            image_format = info[0] if info[0] in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            if image_format == "jpeg" or channel == "rgb":
                image = image.convert("RGB")
            image.save(buffer, format=image_format, quality=quality)
            return buffer.getvalue(), f"image/{image_format}"
        if channel == "rgb":
            image.convert("RGB").save(buffer, format="PNG")
        else:
            alpha = image.convert("RGBA").getchannel("A")
            result = Image.new("RGBA", image.size)
            result.putalpha(alpha)
            result.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"

    # --- introspection --------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=(
                f"ComfyUI SIMULATOR {SIMULATOR_VERSION}: a fake ComfyUI server for development and tests.\n"
                "No models, no GPU. Routes: /prompt /queue /history /view /ws /object_info /system_stats,\n"
                "simulator controls: GET|POST /simulator/faults, POST /simulator/restart,\n"
                "GET /simulator/stats.\n"
            )
        )

    async def system_stats(self, request: web.Request) -> web.Response:
        ram_total, ram_free = _ram()
        vram_total = 8 * GIB
        vram_free = vram_total - (6 * GIB if self.sim.currently_running else GIB // 2)
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": SIMULATOR_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "none (comfyui-simulator)",
                    "embedded_python": False,
                    "argv": ["comfyui-simulator", platform.node()],
                },
                "devices": [
                    {
                        "name": "Simulated GPU",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": vram_total,
                        "vram_free": vram_free,
                        "torch_vram_total": vram_total,
                        "torch_vram_free": vram_free,
                    }
                ],
            }
        )

    async def object_info(self, request: web.Request) -> web.Response:
        self._list_input_files()
        return web.json_response(self.sim.object_info)

    async def object_info_class(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        self._list_input_files()
        info = self.sim.object_info.get(node_class)
        return web.json_response({node_class: info} if info is not None else {})

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(list(MODEL_FOLDERS))

    async def models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        files = {"checkpoints": self.sim.config.checkpoints, "loras": self.sim.config.loras}
        return web.json_response(list(files.get(folder, ())))

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def free(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # --- simulator controls ---------------------------------------------------------------------------

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"simulator": SIMULATOR_VERSION, "faults": self.sim.config.faults()})

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault settings")
            faults = self.sim.update_faults(changes)
        except ValueError as error:  # JSONDecodeError is a ValueError
            return web.json_response({"error": "invalid_faults", "detail": str(error)}, status=400)
        return web.json_response({"simulator": SIMULATOR_VERSION, "faults": faults})

    async def get_stats(self, request: web.Request) -> web.Response:
        """Wall-clock times (time.time(), seconds) of each prompt, oldest first: `received` (POST /prompt
        arrived), then `execution_start` and the terminal event. For benchmarks; a restart clears them."""
        return web.json_response(
            {"simulator": SIMULATOR_VERSION, "prompts": [dict(entry) for entry in self.sim.timings.values()]}
        )

    async def post_restart(self, request: web.Request) -> web.Response:
        """Simulated crash and restart. Body (optional): {"downtime": seconds}."""
        body = await request.text()
        try:
            downtime = float(json.loads(body).get("downtime", 0.0)) if body.strip() else 0.0
            if not 0 <= downtime <= 3600:
                raise ValueError("downtime must be between 0 and 3600 seconds")
        except (ValueError, AttributeError, TypeError) as error:
            return web.json_response({"error": "invalid_restart", "detail": str(error)}, status=400)
        await self.sim.restart(downtime)
        response = web.json_response(
            {"simulator": SIMULATOR_VERSION, "restarted": True, "downtime": downtime}
        )
        response.force_close()
        return response


def create_app(config: SimulatorConfig | None = None) -> web.Application:
    """The aiohttp application of one simulator instance (its state lives in `app[SIMULATOR_KEY]`)."""
    sim = Simulator(config or SimulatorConfig())
    app = web.Application(middlewares=[origin_check], client_max_size=100 * 1024 * 1024)
    app[SIMULATOR_KEY] = sim
    Routes(sim).register(app)

    async def on_startup(app: web.Application) -> None:
        await sim.start()

    async def on_shutdown(app: web.Application) -> None:
        sim.abort_sockets()

    async def on_cleanup(app: web.Application) -> None:
        await sim.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app

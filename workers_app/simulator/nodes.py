"""The simulated node classes: their /object_info entries and what "executing" each one does.

No model is loaded and nothing is sampled. Values flowing between nodes are small stand-ins (a checkpoint
name, a prompt text, a latent's size and seed); images are real Pillow images derived from the prompt text
or the EmptyImage colour and the seed (see images.py), so the PNGs differ from prompt to prompt.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import mimetypes
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from . import files
from . import images as imaging

OBJECT_INFO_PATH = Path(__file__).with_name("object_info.json")
SIMULATOR_VERSION = "0.3.64-simulator"
SAMPLERS = frozenset({"KSampler"})
ALWAYS_CHANGED = frozenset({"SaveImageWebsocket"})  # its IS_CHANGED returns time.time(): never cached
TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic, as in ComfyUI's PreviewImage


@functools.cache
def _object_info_template() -> dict[str, Any]:
    return json.loads(OBJECT_INFO_PATH.read_text(encoding="utf-8"))


def load_object_info(checkpoints: tuple[str, ...], loras: tuple[str, ...] = ()) -> dict[str, Any]:
    """/object_info of the simulator: the captured subset, with the simulated checkpoint and LoRA names."""
    info = copy.deepcopy(_object_info_template())
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(checkpoints)
    info["LoraLoader"]["input"]["required"]["lora_name"][0] = list(loras)
    return info


@dataclass(frozen=True)
class ModelPart:
    """MODEL, CLIP or VAE of a simulated checkpoint."""

    kind: str
    ckpt_name: str

    def __str__(self) -> str:
        return f"<simulated {self.kind} of {self.ckpt_name}>"


@dataclass(frozen=True)
class Conditioning:
    text: str

    def __str__(self) -> str:
        return f"<simulated CONDITIONING {self.text[:40]!r}>"


@dataclass(frozen=True)
class Latent:
    """A latent batch: its size, and the text and seed it was sampled with (None before sampling)."""

    width: int
    height: int
    batch_size: int
    text: str | None = None
    seed: int | None = None

    def __str__(self) -> str:
        return f"<simulated LATENT {self.batch_size}x4x{self.height // 8}x{self.width // 8}>"


@dataclass
class NodeResult:
    """A node's outputs (by output index) and its UI result (None: no `executed` event)."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class NodeContext(Protocol):
    """What a running node may use; provided by the engine for each node it runs."""

    node_id: str
    duration: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    output_dir: str
    temp_dir: str
    input_dir: str

    async def sleep(self, seconds: float) -> None: ...

    previews: bool  # the prompt's preview method is not "none": samplers send latent previews

    async def progress(
        self, value: int, total: int, preview: Image.Image | None = None, preview_format: str = "PNG"
    ) -> None: ...

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def random_letters(self, count: int) -> str: ...


NodeFunction = Callable[..., Awaitable[NodeResult]]


def describe(value: Any) -> Any:
    """format_value of the real error payload: scalars as they are, anything else as a string."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        return f"<simulated IMAGE {len(value)}x{value[0].height}x{value[0].width}x3>"
    return str(value)


def png_chunks(ctx: NodeContext) -> dict[str, str]:
    """tEXt chunks of a saved image: the workflow as `prompt`, then one per extra_pnginfo key."""
    chunks = {"prompt": json.dumps(ctx.prompt)}
    extra = ctx.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        chunks.update({key: json.dumps(value) for key, value in extra.items()})
    chunks["comfyui_simulator"] = SIMULATOR_VERSION
    return chunks


async def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int, color: int) -> NodeResult:
    await ctx.sleep(ctx.duration)
    image = await ctx.compute(imaging.solid, width, height, color)
    return NodeResult(([image] * batch_size,))


async def image_add_noise(
    ctx: NodeContext, image: list[Image.Image], seed: int, strength: float
) -> NodeResult:
    await ctx.sleep(ctx.duration)
    noisy = await ctx.compute(
        lambda: [imaging.add_noise(im, seed, i, strength) for i, im in enumerate(image)]
    )
    return NodeResult((noisy,))


async def image_blur(
    ctx: NodeContext, image: list[Image.Image], blur_radius: int, sigma: float
) -> NodeResult:
    await ctx.sleep(ctx.duration)
    blurred = await ctx.compute(lambda: [imaging.blur(im, sigma) for im in image])
    return NodeResult((blurred,))


def input_files(input_dir: str) -> list[str]:
    """LoadImage's choices: the image files at the top of the input folder, sorted (as ComfyUI lists them)."""
    try:
        names = os.listdir(input_dir)
    except FileNotFoundError:
        return []
    images = [n for n in names if os.path.isfile(os.path.join(input_dir, n)) and _is_image_name(n)]
    return sorted(images)


def _is_image_name(name: str) -> bool:
    return (mimetypes.guess_type(name)[0] or "").startswith("image/")


def annotated_path(name: str, dirs: dict[str, str]) -> str | None:
    """folder_paths.get_annotated_filepath: `sub/name [temp]` in the temp folder, input by default; None when
    the name leaves its folder."""
    base = dirs["input"]
    for kind in ("output", "input", "temp"):
        if name.endswith(f" [{kind}]"):
            name, base = name[: -len(kind) - 3], dirs[kind]
    path = os.path.abspath(os.path.join(base, name))
    return path if os.path.commonpath((base, path)) == base else None


def validate_load_image(inputs: dict[str, Any], dirs: dict[str, str]) -> bool | str:
    """LoadImage.VALIDATE_INPUTS: the named file must exist (the choice list is not checked)."""
    image = inputs.get("image")
    path = annotated_path(image, dirs) if isinstance(image, str) else None
    if path is None or not os.path.exists(path):
        return f"Invalid image file: {image}"
    return True


def load_image_changed(inputs: dict[str, Any], dirs: dict[str, str]) -> str:
    """LoadImage.IS_CHANGED: the file's SHA-256, so a file replaced under the same name is loaded again."""
    image = inputs.get("image")
    path = annotated_path(image, dirs) if isinstance(image, str) else None
    try:
        with open(path or "", "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


async def load_image(ctx: NodeContext, image: str) -> NodeResult:
    """The IMAGE (RGB) and MASK (from the alpha channel, none: zeros) of a file in the input folder."""
    await ctx.sleep(ctx.duration)
    path = annotated_path(image, {"input": ctx.input_dir, "temp": ctx.temp_dir, "output": ctx.output_dir})

    def load() -> tuple[list[Image.Image], list[Image.Image]]:
        with Image.open(path or "") as source:
            rgb = source.convert("RGB")
            mask = source.getchannel("A") if "A" in source.getbands() else Image.new("L", source.size, 0)
        return [rgb], [mask]

    rgb, mask = await ctx.compute(load)
    return NodeResult((rgb, mask))


async def image_invert(ctx: NodeContext, image: list[Image.Image]) -> NodeResult:
    await ctx.sleep(ctx.duration)
    return NodeResult((await ctx.compute(lambda: [ImageOps.invert(im.convert("RGB")) for im in image]),))


async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    await ctx.sleep(ctx.duration)
    return NodeResult(tuple(ModelPart(kind, ckpt_name) for kind in ("MODEL", "CLIP", "VAE")))


async def lora_loader(
    ctx: NodeContext,
    model: ModelPart,
    clip: ModelPart,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
) -> NodeResult:
    await ctx.sleep(ctx.duration)
    return NodeResult((model, clip))


async def clip_text_encode(ctx: NodeContext, text: str, clip: ModelPart) -> NodeResult:
    await ctx.sleep(ctx.duration)
    return NodeResult((Conditioning(text),))


async def empty_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int) -> NodeResult:
    await ctx.sleep(ctx.duration)
    return NodeResult((Latent(width, height, batch_size),))


def _latent_preview(latent: Latent, step: int, steps: int) -> Image.Image:
    """A latent-sized image that brightens as the sampler goes (what a preview shows is not simulated)."""
    size = (max(8, latent.width // 8), max(8, latent.height // 8))
    level = 40 + 200 * step // steps
    return Image.new("RGB", size, (level, level // 2, 255 - level))


async def ksampler(
    ctx: NodeContext,
    model: ModelPart,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: float,
) -> NodeResult:
    """Reports `progress` 1..steps of steps, one step per slice of the node's time, each with a JPEG preview
    of 1/8 the image's size (latent2rgb's) when previews are on."""
    for step in range(1, steps + 1):
        await ctx.sleep(ctx.duration / steps)
        preview = _latent_preview(latent_image, step, steps) if ctx.previews else None
        await ctx.progress(step, steps, preview, "JPEG")
    text = positive.text if isinstance(positive, Conditioning) else ""
    return NodeResult((Latent(latent_image.width, latent_image.height, latent_image.batch_size, text, seed),))


async def vae_decode(ctx: NodeContext, samples: Latent, vae: ModelPart) -> NodeResult:
    await ctx.sleep(ctx.duration)

    def decode() -> list[Image.Image]:
        if samples.text is None or samples.seed is None:
            return [imaging.gray(samples.width, samples.height)] * samples.batch_size
        return [
            imaging.render_prompt(samples.width, samples.height, samples.text, samples.seed, index)
            for index in range(samples.batch_size)
        ]

    return NodeResult((await ctx.compute(decode),))


async def save_image(
    ctx: NodeContext, images: list[Image.Image], filename_prefix: str = "ComfyUI"
) -> NodeResult:
    await ctx.sleep(ctx.duration)
    results = await ctx.compute(
        files.save_images, images, filename_prefix, ctx.output_dir, "output", png_chunks(ctx)
    )
    return NodeResult((), {"images": results})


async def preview_image(ctx: NodeContext, images: list[Image.Image]) -> NodeResult:
    await ctx.sleep(ctx.duration)
    prefix = f"ComfyUI_temp_{ctx.random_letters(5)}"
    results = await ctx.compute(files.save_images, images, prefix, ctx.temp_dir, "temp", png_chunks(ctx))
    return NodeResult((), {"images": results})


async def save_image_websocket(ctx: NodeContext, images: list[Image.Image]) -> NodeResult:
    """Sends each image as a binary preview frame with `progress` 0..N-1 of N; leaves no UI result."""
    for step, image in enumerate(images):
        await ctx.sleep(ctx.duration / len(images))
        await ctx.progress(step, len(images), image)
    return NodeResult(())


IMPLEMENTATIONS: dict[str, NodeFunction] = {
    "EmptyImage": empty_image,
    "LoadImage": load_image,
    "ImageInvert": image_invert,
    "ImageAddNoise": image_add_noise,
    "ImageBlur": image_blur,
    "CheckpointLoaderSimple": checkpoint_loader,
    "LoraLoader": lora_loader,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent_image,
    "KSampler": ksampler,
    "VAEDecode": vae_decode,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "SaveImageWebsocket": save_image_websocket,
}


# VALIDATE_INPUTS of node classes that have one: the inputs it takes (their choice lists are not checked) and
# the check, given the node's inputs and the folders (True, or why not).
CUSTOM_VALIDATION: dict[
    str, tuple[frozenset[str], Callable[[dict[str, Any], dict[str, str]], bool | str]]
] = {
    "LoadImage": (frozenset({"image"}), validate_load_image),
}


# IS_CHANGED of node classes that have one: part of the node's cache key.
IS_CHANGED: dict[str, Callable[[dict[str, Any], dict[str, str]], str]] = {"LoadImage": load_image_changed}


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass
class OutputCache:
    """The default ("classic") cache: node outputs keyed by input signature, keeping only the entries
    that the current prompt can use (so in practice the previous prompt's nodes)."""

    entries: dict[str, CacheEntry] = field(default_factory=dict)

    def set_prompt(self, signatures: set[str]) -> None:
        self.entries = {key: value for key, value in self.entries.items() if key in signatures}

    def get(self, signature: str) -> CacheEntry | None:
        return self.entries.get(signature)

    def store(self, signature: str, entry: CacheEntry) -> None:
        self.entries[signature] = entry

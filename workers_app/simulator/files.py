"""Output files as the real SaveImage/PreviewImage write them (folder_paths.get_save_image_path semantics)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from . import images as imaging


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str]:
    """(full_output_folder, filename, counter, subfolder) for a prefix; raises like the real server
    when the prefix leaves the output folder. The counter continues from the highest existing file."""
    if "%" in filename_prefix:
        filename_prefix = _compute_vars(filename_prefix, image_width, image_height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        # The real node raises a bare Exception with this text (clients see exception_type "Exception").
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}\n"
        )
    prefix_len = len(filename)

    def counter_of(name: str) -> int:
        if (
            os.path.normcase(name[:prefix_len]) != os.path.normcase(filename)
            or name[prefix_len : prefix_len + 1] != "_"
        ):
            return 0
        try:
            return int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            return 0

    try:
        counter = max((counter_of(name) for name in os.listdir(full_output_folder)), default=0) + 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in (
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(key, value)
    return prefix


def save_images(
    batch: list[Image.Image],
    filename_prefix: str,
    output_dir: str,
    folder_type: str,
    text_chunks: dict[str, str],
) -> list[dict[str, str]]:
    """Writes `<name>_<counter:05>_.png` per batch item; returns UI entries (filename, subfolder, type)."""
    first = batch[0]
    folder, filename, counter, subfolder = get_save_image_path(
        filename_prefix, output_dir, first.width, first.height
    )
    results = []
    for batch_number, image in enumerate(batch):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        Path(folder, name).write_bytes(imaging.encode_png(image, text_chunks))
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results

"""The WADO-RS image services in one import: transcode, frames, render, DICOM JSON.

Each job lives in its own module (transcode.py, frames.py, render.py with render_params.py,
dicom_json.py); the routers import from here. All are pure functions over a pydicom Dataset:
no I/O, no storage, no HTTP. Errors are the node's typed errors (406 NotAcceptable,
404 NotFound, 400 InvalidRequest).
"""

from __future__ import annotations

from node.services.dicom_json import (
    bulkdata,
    bulkdata_paths,
    parse_path,
    rebase_bulkdata,
    to_dicom_json,
)
from node.services.frames import all_frames, frames, parse_frame_list
from node.services.render import (
    RenderingOptions,
    Viewport,
    Window,
    parse_rendering_query,
    render,
    thumbnail,
)
from node.services.syntaxes import Representation
from node.services.transcode import transcode

__all__ = [
    "RenderingOptions",
    "Representation",
    "Viewport",
    "Window",
    "all_frames",
    "bulkdata",
    "bulkdata_paths",
    "frames",
    "parse_frame_list",
    "parse_path",
    "parse_rendering_query",
    "rebase_bulkdata",
    "render",
    "thumbnail",
    "to_dicom_json",
    "transcode",
]

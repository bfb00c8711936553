"""C-STORE SCP (PS3.4 Annex B): received objects go to the archive's one store service.

The dataset is taken as the peer encoded it (`encoded_dataset`, with the File Meta Information
pynetdicom builds from the presentation context), so what is stored is exactly what the
modality sent; it is held in memory and sealed by the store service, never written in the clear.
"""

from __future__ import annotations

import io
import logging
from typing import Final

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from node.dimse.association import KnownAEs
from node.dimse.status import failure
from node.services.archive import Archive
from node.services.store import StoreFailure, store_bytes

log = logging.getLogger("pacsmesh.dimse")

SUCCESS: Final = 0x0000
# PS3.4 B.2.3: C-STORE statuses. "Error: Data Set does not match SOP Class" (A9xx) is the
# refusal for an object that lacks what this archive requires of it.
DATA_SET_DOES_NOT_MATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
OUT_OF_RESOURCES: Final = 0xA700
NOT_AUTHORIZED: Final = 0x0124
MISSING_ACCESSION: Final = "AccessionNumber (0008,0050) is required from a modality"
_ACCESSION_TAG: Final = 0x00080050


def c_store_status(code: int) -> int:
    """The C-STORE status for a store-service failure reason (PS3.4 B.2.3).

    Codes already in a C-STORE family pass unchanged; the rest (processing failure 0110,
    duplicate with different content 0111) become "Error: Cannot understand" Cxxx keeping their
    low bits, since C-STORE peers such as DCMTK do not know the general N-service codes.
    """
    if 0xA700 <= code <= 0xA7FF or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF:
        return code
    if code == NOT_AUTHORIZED:
        return code
    return CANNOT_UNDERSTAND | (code & 0x0FFF)


def has_accession(data: bytes) -> bool:
    """Whether the encoded object carries a non-empty Accession Number."""
    # Only the one element is decoded; the rest of the header is skipped.
    ds = pydicom.dcmread(
        io.BytesIO(data), stop_before_pixels=True, specific_tags=[_ACCESSION_TAG], force=True
    )
    value = ds.get(_ACCESSION_TAG)
    return value is not None and bool(str(value.value or "").strip())


def handle_store(event: Event, archive: Archive, known: KnownAEs) -> int | Dataset:
    """EVT_C_STORE: store one instance; the status says what happened."""
    data = event.encoded_dataset()
    remote = known.get(event.assoc.requestor.ae_title)
    try:
        if remote is not None and remote.role == "modality" and not has_accession(data):
            # The order it belongs to cannot be found without it: refuse, store nothing.
            return failure(DATA_SET_DOES_NOT_MATCH, MISSING_ACCESSION)
        store_bytes(archive, data)
    except StoreFailure as exc:
        return failure(c_store_status(exc.code), exc.reason)
    except Exception as exc:  # the peer gets a status; the log gets the kind, not the data
        log.error("C-STORE failed: %s", type(exc).__name__, exc_info=exc)
        status = getattr(exc, "dimse_status", OUT_OF_RESOURCES)
        return failure(int(status), "the instance could not be stored")
    return SUCCESS

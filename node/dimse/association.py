"""Association policy: only known AE titles may associate (PS3.8 §7.1.1.3).

Titles are compared upper-cased and stripped, because settings from environment variables
arrive lower-cased and peers pad with spaces. An AE configured with `tls = true` may associate
only over DICOM TLS: on the plain port its title is refused like an unknown one, so that
nobody can borrow it without its certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from pynetdicom.events import Event

from node.settings import RemoteAE

log = logging.getLogger("pacsmesh.dimse")

# PS3.8 §9.3.4 A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognized.
REJECTED_PERMANENT: Final = 0x01
SOURCE_SERVICE_USER: Final = 0x01
CALLING_AE_NOT_RECOGNIZED: Final = 0x03


def normalise_title(title: str | bytes) -> str:
    """An AE title as compared: stripped and upper-cased."""
    if isinstance(title, bytes):
        title = title.decode("ascii", errors="replace")
    return title.strip().upper()


class KnownAEs:
    """The remote AEs from the settings, looked up by title."""

    def __init__(self, remote_aes: Mapping[str, RemoteAE]) -> None:
        self._by_title = {normalise_title(t): ae for t, ae in remote_aes.items()}

    def get(self, title: str | bytes) -> RemoteAE | None:
        """The AE with this title, or None if it is not known."""
        return self._by_title.get(normalise_title(title))


def handle_requested(event: Event, known: KnownAEs, over_tls: bool = False) -> None:
    """EVT_REQUESTED: refuse an association from an unknown calling AE before negotiation.

    `over_tls` is bound per listener: True on the DICOM TLS port.
    """
    request = event.assoc.requestor.primitive
    ae = known.get(request.calling_ae_title) if request is not None else None
    if ae is None or (ae.tls and not over_tls):
        # An AE title names a device, not a person: operators need it to fix the settings.
        calling = request.calling_ae_title if request is not None else "?"
        if ae is None:
            log.warning("association refused: calling AE title %r not recognized", calling)
        else:
            log.warning("association refused: AE %r must use the DICOM TLS port", calling)
        event.assoc.acse.send_reject(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNIZED
        )
        # As pynetdicom's own negotiation does after a reject: wait until the A-ASSOCIATE-RJ
        # has left, or the socket closes under it and the peer sees only an abort.
        event.assoc.kill()
